"""Time embeddings for networks conditioned on a flow/diffusion time ``t`` in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalTimeEmbedding", "TimestepMLP"]


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sin/cos features of a time in [0, 1].

    ``t`` is multiplied by ``scale`` first: the frequencies were designed for integer diffusion steps
    in [0, 1000], and without the scaling neighbouring times in [0, 1] would be nearly identical.

    Args:
        dim: Output size (odd sizes get one zero feature at the end).
        scale: Factor applied to ``t`` before the sinusoids.
        max_period: Longest period of the sinusoids, in scaled time units.
        endpoint: The lowest frequency is exactly ``1 / max_period`` (exponents ``k / (half - 1)``, as flax
            models write it) instead of one step above it (``k / half``).
        sin_first: ``[sin, cos]`` instead of ``[cos, sin]``.
    """

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0, *, endpoint: bool = False,
                 sin_first: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.sin_first = sin_first
        half = dim // 2
        steps = max(half - 1, 1) if endpoint else max(half, 1)
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / steps)
        # a buffer so it follows .to(device); not saved because it is a pure function of the arguments
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed times.

        Args:
            t: Times, shape ``(B,)``.

        Returns:
            Features, shape ``(B, dim)``.
        """
        # computed in the module's dtype (follows .to(dtype)), whatever dtype the caller's t has
        angles = (self.scale * t.to(self.frequencies.dtype))[:, None] * self.frequencies[None, :]
        pair = (torch.sin(angles), torch.cos(angles)) if self.sin_first else (torch.cos(angles), torch.sin(angles))
        features = torch.cat(pair, dim=-1)
        if self.dim % 2:
            features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
        return features


class TimestepMLP(nn.Module):
    """Sinusoidal features followed by a two-layer MLP: ``(B,) -> (B, out_dim)``.

    Args:
        out_dim: Output size.
        frequency_dim: Size of the sinusoidal features.
    """

    def __init__(self, out_dim: int, frequency_dim: int = 64) -> None:
        super().__init__()
        self.sinusoids = SinusoidalTimeEmbedding(frequency_dim)
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        """Embed times ``(B,)`` into ``(B, out_dim)``."""
        return self.mlp(self.sinusoids(t))
