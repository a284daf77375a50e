"""Spatio-temporal transformer over frames of discrete tokens (CoPilot4D's world model, small scale).

A video of ``T`` frames of ``H x W`` tokens is embedded token by token (plus a learned spatial
position, a learned temporal position and the frame's projected action). Each layer attends
*within a frame* (all ``H * W`` tokens of one frame), then *across time at one position* (the ``T``
tokens at the same pixel, under a temporal mask), then applies an MLP. The head predicts a level for
every token.

The temporal mask decides what a frame may see:
- ``"causal"``: frame t sees frames <= t (world-model prediction of the future from the past);
- ``"full"``: every frame sees every frame (bidirectional denoising);
- ``"identity"``: a frame sees only itself, i.e. the model is unconditional on other frames. Trained
  this way on a fraction of batches, the same network gives the unconditional logits that
  classifier-free guidance needs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.errors import ConfigError

__all__ = ["SimpleVideoTransformer", "TemporalMask", "temporal_attention_mask"]

TemporalMask = Literal["causal", "full", "identity"]
TEMPORAL_MASKS = ("causal", "full", "identity")


def temporal_attention_mask(kind: TemporalMask, num_frames: int, device: torch.device | None = None) -> Tensor | None:
    """Boolean ``(T, T)`` mask, True where frame i (row) may attend to frame j (column); None = all."""
    if kind == "full":
        return None
    if kind == "causal":
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device).tril()
    if kind == "identity":
        return torch.eye(num_frames, dtype=torch.bool, device=device)
    raise ConfigError(f"temporal mask must be one of {', '.join(TEMPORAL_MASKS)}, got '{kind}'")


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """Transformer sinusoids of ``positions`` ``(L,)`` -> ``(L, dim)`` float32 (dim even)."""
    half = dim // 2
    frequencies = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = positions.reshape(-1, 1) * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def _sincos_2d(dim: int, height: int, width: int) -> Tensor:
    """Row features in the first half, column features in the second: ``(H * W, dim)``, row-major."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, rows), _sincos_1d(dim - dim // 2, cols)], dim=1)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, upcast_on_cpu: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.upcast_on_cpu = upcast_on_cpu
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, L, D)``; ``mask (L, L)`` bool, True = may attend."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        if self.upcast_on_cpu and query.device.type == "cpu" and query.dtype != torch.float32:
            # PyTorch's CPU flash kernel is ~5x slower in bf16 than in fp32 on short sequences (measured).
            query, key, value = query.float(), key.float(), value.float()
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask).to(qkv.dtype)
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))


class SpatioTemporalBlock(nn.Module):
    """Pre-norm [spatial attention -> temporal attention -> MLP], each residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, temporal_mask: Tensor | None) -> Tensor:
        """``x (B, T, N, D)`` -> same shape."""
        batch, frames, tokens, dim = x.shape
        spatial = x.reshape(batch * frames, tokens, dim)
        spatial = spatial + self.spatial_attention(self.spatial_norm(spatial))
        temporal = spatial.reshape(batch, frames, tokens, dim).transpose(1, 2).reshape(batch * tokens, frames, dim)
        temporal = temporal + self.temporal_attention(self.temporal_norm(temporal), temporal_mask)
        temporal = temporal + self.mlp(self.mlp_norm(temporal))
        return temporal.reshape(batch, tokens, frames, dim).transpose(1, 2)


class SimpleVideoTransformer(nn.Module):
    """Predicts token levels of every frame of a (partly masked) token video, given per-frame actions.

    Args:
        num_levels: Token levels ``V`` (16); the input vocabulary adds one mask token with id ``V``.
        num_frames: Frames ``T`` the learned temporal positions cover (shorter inputs use the first ones).
        height, width: Tokens per frame side.
        embed_dim: Token width ``D``.
        num_layers: Spatio-temporal blocks.
        num_heads: Attention heads (divides ``D``).
        action_dim: Size of a frame's action vector (2: ``[dx, dy]``).
        mlp_ratio: MLP width as a multiple of ``D``.
    """

    def __init__(
        self,
        num_levels: int = 16,
        num_frames: int = 20,
        height: int = 32,
        width: int = 32,
        embed_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        action_dim: int = 2,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})")
        self.num_levels = num_levels
        self.mask_token_id = num_levels
        self.num_frames = num_frames
        self.height, self.width = height, width
        self.token_embedding = nn.Embedding(num_levels + 1, embed_dim)
        self.action_projection = nn.Linear(action_dim, embed_dim)
        # Learned positions, started from sin/cos features: a random start must first discover the 2-D
        # layout that shifting digits needs, which costs thousands of steps on a CPU budget.
        self.spatial_position = nn.Parameter(_sincos_2d(embed_dim, height, width))
        self.temporal_position = nn.Parameter(_sincos_1d(embed_dim, torch.arange(num_frames, dtype=torch.float64)))
        self.blocks = nn.ModuleList(SpatioTemporalBlock(embed_dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.head_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_levels)

    def forward(self, tokens: Tensor, actions: Tensor, temporal_mask: TemporalMask = "causal") -> Tensor:
        """Logits of every token's level.

        Args:
            tokens: ``(B, T, H, W)`` integer ids in ``[0, V]`` (``V`` = mask).
            actions: ``(B, T, action_dim)``.
            temporal_mask: ``"causal" | "full" | "identity"`` (see module docstring).

        Returns:
            ``(B, T, H, W, V)`` logits (float32).
        """
        batch, frames, height, width = tokens.shape
        if frames > self.num_frames or (height, width) != (self.height, self.width):
            raise ConfigError(
                f"model expects at most {self.num_frames} frames of {self.height}x{self.width} tokens, "
                f"got {frames} of {height}x{width}"
            )
        x = self.token_embedding(tokens.reshape(batch, frames, height * width))
        x = x + self.spatial_position + self.temporal_position[:frames, None, :]
        x = x + self.action_projection(actions.to(x.dtype))[:, :, None, :]
        mask = temporal_attention_mask(temporal_mask, frames, tokens.device)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.head_norm(x)).float()
        return logits.reshape(batch, frames, height, width, self.num_levels)
