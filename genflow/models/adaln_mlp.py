"""Velocity fields built from residual MLP blocks with adaptive LayerNorm (adaLN-Zero, as in DiT).

Each block normalises its input (no learned affine), then scales, shifts and gates it with values
computed from the conditioning ``time embedding + context``. The modulation and the output layer
start at zero, so at initialisation every block is the identity and the field outputs zero; training
opens the gates gradually, which keeps deep stacks stable.

:class:`AdaLNMLPVelocityField` treats each point of a set independently given a global context (the
digit4 "GlobalAdaLNMLPCRN"), so it is permutation-equivariant over points.
:class:`VectorVelocityField` is the same network over one vector per sample (e.g. a latent prior flow).

:class:`PlainAdaLNMLPVelocityField` is the older, plainer form (FlowMix's ``GlobalAdaLNMLPCRN``): no residual
stream and no gates; each layer is ``LayerNorm(SiLU(Linear(h))) * (1 + scale) + shift`` with a learned-affine
LayerNorm, and only the output layer starts at zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.models.embeddings import SinusoidalTimeEmbedding, TimestepMLP

__all__ = ["AdaLNResidualBlock", "AdaLNMLP", "AdaLNMLPVelocityField", "PlainAdaLNMLPVelocityField", "VectorVelocityField"]


def _zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _require_points(x: Tensor, point_dim: int) -> None:
    """A clear error for anything but points `(B, N, point_dim)` (skipped while tracing for export)."""
    if not torch.jit.is_tracing() and (x.ndim != 3 or x.shape[-1] != point_dim):
        raise GenflowError(f"expected points of shape (B, N, {point_dim}), got {tuple(x.shape)}")


class AdaLNResidualBlock(nn.Module):
    """``h + gate * MLP(LayerNorm(h) * (1 + scale) + shift)`` with ``(shift, scale, gate)`` from ``cond``.

    Args:
        hidden: Feature size of ``h`` and of ``cond``.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(hidden, 3 * hidden)))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        """Apply the block.

        Args:
            h: Features, shape ``(B, ..., hidden)``.
            cond: Conditioning, shape broadcastable to ``h`` (e.g. ``(B, 1, hidden)`` for ``(B, N, hidden)``).
        """
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class AdaLNMLP(nn.Module):
    """Shared trunk: ``(x (B, ..., data_dim), t (B,), c (B, cond_dim)) -> (B, ..., data_dim)``.

    Every position along the middle axes is processed independently with the same per-sample
    conditioning.

    Args:
        data_dim: Size of the last axis of ``x`` and of the output.
        cond_dim: Size of the context vector ``c``; 0 for an unconditional field.
        hidden: Width of the residual stream.
        depth: Number of residual blocks.
        time_dim: Size of the sinusoidal time features.
    """

    def __init__(self, data_dim: int, cond_dim: int, hidden: int, depth: int, time_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.cond_dim = cond_dim
        self.time_embedding = TimestepMLP(hidden, frequency_dim=time_dim)
        self.context_projection = nn.Linear(cond_dim, hidden) if cond_dim > 0 else None
        self.input_projection = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(AdaLNResidualBlock(hidden) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(hidden, 2 * hidden)))
        self.output_projection = _zero_init(nn.Linear(hidden, data_dim))

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """Evaluate the field.

        Args:
            x: Inputs, shape ``(B, ..., data_dim)``.
            t: Times, shape ``(B,)``.
            c: Context, shape ``(B, cond_dim)``; ``None`` when ``cond_dim == 0``.

        Returns:
            Outputs, shape ``(B, ..., data_dim)``.
        """
        # skipped while tracing for ONNX: shapes are then tensors and the checks only produce warnings
        if not torch.jit.is_tracing() and x.shape[-1] != self.data_dim:
            raise GenflowError(f"expected inputs with last axis {self.data_dim}, got shape {tuple(x.shape)}")
        if (c is None) != (self.context_projection is None):
            raise GenflowError(f"context c must be given iff cond_dim > 0 (cond_dim={self.cond_dim})")
        cond = self.time_embedding(t)
        if self.context_projection is not None:
            cond = cond + self.context_projection(c)
        # (B, hidden) -> (B, 1, ..., 1, hidden): one conditioning vector shared by all positions
        cond = cond.reshape(cond.shape[0], *([1] * (x.ndim - 2)), cond.shape[-1])

        h = self.input_projection(x)
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.output_projection(self.final_norm(h) * (1 + scale) + shift)


class AdaLNMLPVelocityField(AdaLNMLP):
    """Per-point velocity field for point clouds, conditioned on time and a global context.

    Args:
        point_dim: Coordinates per point ``D``.
        cond_dim: Size of the global context (e.g. a PointNet latent); 0 for none.
        hidden: Width of the residual stream.
        depth: Number of residual blocks.
        time_dim: Size of the sinusoidal time features.
    """

    def __init__(
        self, point_dim: int = 2, cond_dim: int = 64, hidden: int = 256, depth: int = 4, time_dim: int = 64
    ) -> None:
        super().__init__(point_dim, cond_dim, hidden, depth, time_dim)

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """Velocity of every point.

        Args:
            x: Points, shape ``(B, N, point_dim)``, any ``N``.
            t: Times, shape ``(B,)``.
            c: Global context, shape ``(B, cond_dim)``.

        Returns:
            Velocities, shape ``(B, N, point_dim)``.
        """
        _require_points(x, self.data_dim)
        return super().forward(x, t, c)


class VectorVelocityField(AdaLNMLP):
    """Velocity field over one vector per sample, e.g. a prior flow over latent codes.

    Args:
        dim: Size of the vector.
        cond_dim: Size of an optional context vector; 0 for an unconditional field.
        hidden: Width of the residual stream.
        depth: Number of residual blocks.
        time_dim: Size of the sinusoidal time features.
    """

    def __init__(self, dim: int, cond_dim: int = 0, hidden: int = 256, depth: int = 3, time_dim: int = 64) -> None:
        super().__init__(dim, cond_dim, hidden, depth, time_dim)

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """Velocity of each vector.

        Args:
            x: Vectors, shape ``(B, dim)``.
            t: Times, shape ``(B,)``.
            c: Context, shape ``(B, cond_dim)``, or ``None`` when ``cond_dim == 0``.

        Returns:
            Velocities, shape ``(B, dim)``.
        """
        if not torch.jit.is_tracing() and (x.ndim != 2 or x.shape[-1] != self.data_dim):
            raise GenflowError(f"expected vectors of shape (B, {self.data_dim}), got {tuple(x.shape)}")
        return super().forward(x, t, c)


class PlainAdaLNMLPVelocityField(nn.Module):
    """Per-point velocity field: a plain MLP whose every layer is modulated by ``(time, context)``.

    ``cond = SiLU(W_c2 SiLU(W_c c + W_t sin/cos(t)))`` (``W_t`` without bias); ``h = SiLU(W_in x)``; then per
    width w: ``h = LayerNorm(SiLU(W h)) * (1 + scale) + shift`` with ``(scale, shift) = W_m cond``; the output
    layer starts at zero. The time features are ``[sin(t f), cos(t f)]`` of the raw time with
    ``f_k = 10000^(-k / (half - 1))``.

    Args:
        point_dim: Coordinates per point ``D``.
        cond_dim: Size of the global context.
        widths: Width of each modulated layer (the first is also the input projection's).
        time_dim: Size of the sinusoidal time features (even).
        modulation_dim: Width of the conditioning vector the scales and shifts are read from.
    """

    def __init__(self, point_dim: int = 2, cond_dim: int = 64, widths: tuple[int, ...] = (64,) * 6,
                 time_dim: int = 32, modulation_dim: int = 256) -> None:
        super().__init__()
        if not widths or time_dim < 4 or time_dim % 2:
            raise GenflowError(f"PlainAdaLNMLPVelocityField needs widths and an even time_dim >= 4, got {widths}, {time_dim}")
        self.data_dim = point_dim
        self.time_features = SinusoidalTimeEmbedding(time_dim, scale=1.0, endpoint=True, sin_first=True)  # of the raw time
        self.context_projection = nn.Linear(cond_dim, modulation_dim)
        self.time_projection = nn.Linear(time_dim, modulation_dim, bias=False)
        self.cond_mlp = nn.Linear(modulation_dim, modulation_dim)
        self.input_projection = nn.Linear(point_dim, widths[0])
        self.layers = nn.ModuleList()
        self.modulations = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = widths[0]
        for next_width in widths:
            self.layers.append(nn.Linear(width, next_width))
            self.modulations.append(nn.Linear(modulation_dim, 2 * next_width))
            self.norms.append(nn.LayerNorm(next_width, eps=1e-6))
            width = next_width
        self.output_projection = _zero_init(nn.Linear(width, point_dim))

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """Velocity of every point.

        Args:
            x: Points, shape ``(B, N, point_dim)``.
            t: Times, shape ``(B,)``.
            c: Global context, shape ``(B, cond_dim)``.

        Returns:
            Velocities, shape ``(B, N, point_dim)``.
        """
        _require_points(x, self.data_dim)
        act = nn.functional.silu
        cond = act(self.context_projection(c) + self.time_projection(self.time_features(t)))
        cond = act(self.cond_mlp(cond))[:, None, :]  # (B, 1, modulation_dim): shared by all points
        h = act(self.input_projection(x))
        for layer, modulation, norm in zip(self.layers, self.modulations, self.norms):
            scale, shift = modulation(cond).chunk(2, dim=-1)
            h = norm(act(layer(h))) * (1 + scale) + shift
        return self.output_projection(h)
