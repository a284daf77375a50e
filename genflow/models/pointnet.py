"""PointNet global encoder: a shared per-point MLP, max-pooled over points, then a head.

Max pooling makes the code invariant to point order and defined for any number of points, and the
forward pass has no data-dependent control flow, so it exports to ONNX with a dynamic point axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from genflow.errors import GenflowError

__all__ = ["PointNetEncoder"]


class PointNetEncoder(nn.Module):
    """Encode a point set ``(B, N, in_dim)`` into one vector ``(B, latent_dim)``.

    No batch norm (unlike the original PointNet): statistics over tiny or padded batches would make
    the code depend on the other samples in the batch.

    Args:
        in_dim: Coordinates per point.
        latent_dim: Size of the code.
        hidden: Widths of the shared per-point MLP; the last one is the pooled feature size.
        variational: Output a Gaussian ``(mu, logvar)`` instead of a single code (VAE encoders).
        layer_norm: A LayerNorm (learned affine) after each per-point layer's activation.
        activation: ``"relu"`` or ``"silu"``, of the per-point layers and the head.
        head: ``"mlp"`` (Linear, activation, Linear after the pooling) or ``"linear"`` (one Linear).
    """

    def __init__(
        self,
        in_dim: int = 2,
        latent_dim: int = 64,
        hidden: Sequence[int] = (64, 128, 256),
        variational: bool = False,
        layer_norm: bool = False,
        activation: Literal["relu", "silu"] = "relu",
        head: Literal["mlp", "linear"] = "mlp",
    ) -> None:
        super().__init__()
        if not hidden:
            raise GenflowError("PointNetEncoder needs at least one hidden width")
        if activation not in ("relu", "silu") or head not in ("mlp", "linear"):
            raise GenflowError(f"PointNetEncoder: unknown activation {activation!r} or head {head!r}")
        act = nn.ReLU if activation == "relu" else nn.SiLU
        self.in_dim = in_dim
        self.latent_dim = latent_dim
        self.variational = variational

        layers: list[nn.Module] = []
        width = in_dim
        for next_width in hidden:
            layers += [nn.Linear(width, next_width), act()]
            if layer_norm:
                layers.append(nn.LayerNorm(next_width, eps=1e-6))
            width = next_width
        self.point_mlp = nn.Sequential(*layers)
        out_dim = 2 * latent_dim if variational else latent_dim
        self.head = (nn.Sequential(nn.Linear(width, width), act(), nn.Linear(width, out_dim)) if head == "mlp"
                     else nn.Sequential(nn.Linear(width, out_dim)))

    def forward(self, points: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Encode point sets.

        Args:
            points: Shape ``(B, N, in_dim)``, any ``N >= 1``.

        Returns:
            The code ``(B, latent_dim)``; with ``variational=True`` the pair ``(mu, logvar)``, each
            ``(B, latent_dim)``.
        """
        # skipped while tracing for ONNX: shapes are then tensors and the check only produces warnings
        if not torch.jit.is_tracing() and (points.ndim != 3 or points.shape[-1] != self.in_dim):
            raise GenflowError(f"expected points of shape (B, N, {self.in_dim}), got {tuple(points.shape)}")
        pooled = self.point_mlp(points).amax(dim=1)
        out = self.head(pooled)
        if self.variational:
            mu, logvar = out.chunk(2, dim=-1)
            return mu, logvar
        return out
