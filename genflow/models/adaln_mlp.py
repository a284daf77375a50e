"""Velocity fields built from residual MLP blocks with adaptive LayerNorm (adaLN-Zero, as in DiT).

Each block normalises its input (no learned affine), then scales, shifts and gates it with values
computed from the conditioning ``time embedding + context``. The modulation and the output layer
start at zero, so at initialisation every block is the identity and the field outputs zero; training
opens the gates gradually, which keeps deep stacks stable.

:class:`AdaLNMLPVelocityField` treats each point of a set independently given a global context (the
digit4 "GlobalAdaLNMLPCRN"), so it is permutation-equivariant over points.
:class:`VectorVelocityField` is the same network over one vector per sample (e.g. a latent prior flow).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError
from genflow.models.embeddings import TimestepMLP

__all__ = ["AdaLNResidualBlock", "AdaLNMLP", "AdaLNMLPVelocityField", "VectorVelocityField"]


def _zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


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
        if not torch.jit.is_tracing() and (x.ndim != 3 or x.shape[-1] != self.data_dim):
            raise GenflowError(f"expected points of shape (B, N, {self.data_dim}), got {tuple(x.shape)}")
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
