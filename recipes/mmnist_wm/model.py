"""Spatio-temporal transformer over frames of discrete tokens (CoPilot4D's world model, small scale).

A video of ``T`` frames of ``H x W`` tokens is embedded patch by patch: each transformer position
holds a ``p x p`` patch of tokens (``patch_size`` p; 1 = one position per token, as the source), its
embedding the sum of one learned vector per (place in the patch, level), plus a learned spatial
position, a learned temporal position and the frame's projected action. Each layer attends *within a
frame* (all ``(H / p) * (W / p)`` patches of one frame), then *across time at one place* (the ``T``
patches at the same place, under a temporal mask), then applies an MLP. The head predicts a level for
every token of its patch (``p * p`` softmaxes of ``V`` levels).

Patches cut the cost: at 32 x 32 tokens, p = 4 gives 64 positions per frame instead of 1024, and
spatial attention (quadratic in them) was most of the compute. CoPilot4D's own world model works on
patch tokens of a learned tokenizer; here the patch's tokens are embedded losslessly instead.

The temporal mask decides what a frame may see:
- ``"causal"``: frame t sees frames <= t (world-model prediction of the future from the past);
- ``"full"``: every frame sees every frame (bidirectional denoising);
- ``"identity"``: a frame sees only itself, i.e. the model is unconditional on other frames. Trained
  this way on a fraction of batches, the same network gives the unconditional logits that
  classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.errors import ConfigError
from genflow.models.dit import sincos_position_embedding_2d
from genflow.models.embeddings import SinusoidalTimeEmbedding

__all__ = ["PastFrames", "SimpleVideoTransformer", "TemporalMask", "temporal_attention_mask"]

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


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, upcast_on_cpu: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.upcast_on_cpu = upcast_on_cpu
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, cached: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x (B, L, D)``; ``mask (L, S)`` bool, True = may attend; ``cached``: keys and values
        ``(B, heads, S - L, D / heads)`` of earlier positions, attended before ``x``'s own.

        Returns the output ``(B, L, D)`` and ``x``'s own keys and values (for a later cache).
        """
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        query, own_key, own_value = qkv[0], qkv[1], qkv[2]
        key, value = own_key, own_value
        if cached is not None:
            key, value = torch.cat([cached[0].to(key.dtype), key], dim=2), torch.cat([cached[1].to(value.dtype), value], dim=2)
        if self.upcast_on_cpu and query.device.type == "cpu" and query.dtype != torch.float32:
            # PyTorch's CPU flash kernel is ~5x slower in bf16 than in fp32 on short sequences (measured).
            query, key, value = query.float(), key.float(), value.float()
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask).to(qkv.dtype)
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim)), (own_key, own_value)


def _mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SpatioTemporalBlock(nn.Module):
    """Pre-norm [spatial attention -> temporal attention -> MLP], each residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, temporal_mask: Tensor | None, cached: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x (B, T, N, D)`` -> same shape, and the temporal keys/values of these frames.

        ``cached``: temporal keys/values ``(B * N, heads, P, D / heads)`` of ``P`` earlier frames.
        """
        batch, frames, tokens, dim = x.shape
        spatial = x.reshape(batch * frames, tokens, dim)
        spatial = spatial + self.spatial_attention(self.spatial_norm(spatial))[0]
        temporal = spatial.reshape(batch, frames, tokens, dim).transpose(1, 2).reshape(batch * tokens, frames, dim)
        attended, kv = self.temporal_attention(self.temporal_norm(temporal), temporal_mask, cached)
        temporal = temporal + attended
        temporal = temporal + self.mlp(self.mlp_norm(temporal))
        return temporal.reshape(batch, tokens, frames, dim).transpose(1, 2), kv


class JointSpaceTimeBlock(nn.Module):
    """Pre-norm [attention over every patch of every frame -> MLP], each residual.

    One attention over all ``T * N`` positions under the frame-level temporal mask (a position of
    frame i sees every position of the frames i may see): a future patch reads any place of any
    earlier frame in one hop, where the factorised block needs a spatial and a temporal hop to
    follow a moving digit. It costs attention over ``T * N`` positions instead of ``N`` and ``T``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, temporal_mask: Tensor | None, cached: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x (B, T, N, D)`` -> same shape, and the keys/values ``(B, heads, T * N, D / heads)`` of these frames.

        ``temporal_mask``: ``(T, S)`` frame-level, True = may attend; ``cached``: keys/values of ``S - T``
        earlier frames.
        """
        batch, frames, tokens, dim = x.shape
        mask = None if temporal_mask is None else temporal_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
        flat = x.reshape(batch, frames * tokens, dim)
        attended, kv = self.attention(self.norm(flat), mask, cached)
        flat = flat + attended
        flat = flat + self.mlp(self.mlp_norm(flat))
        return flat.reshape(batch, frames, tokens, dim), kv


ATTENTION_KINDS = ("factorized", "joint")


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
        patch_size: Tokens per side of the patch one transformer position holds (divides ``height``
            and ``width``); 1 = one position per token (the source's model, same parameters).
        attention: ``"factorized"`` (the source: spatial, then temporal attention per layer) or
            ``"joint"`` (one attention over all positions of all frames; affordable with patches).
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
        patch_size: int = 1,
        attention: str = "factorized",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})")
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ConfigError(f"model.patch_size ({patch_size}) must be >= 1 and divide the frame size ({height}x{width})")
        if attention not in ATTENTION_KINDS:
            raise ConfigError(f"model.attention must be one of {', '.join(ATTENTION_KINDS)}, got '{attention}'")
        self.num_levels = num_levels
        self.mask_token_id = num_levels
        self.num_frames = num_frames
        self.height, self.width = height, width
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        cells = patch_size * patch_size
        # one vector per (place in the patch, level incl. mask); a patch's embedding is their sum
        self.token_embedding = nn.Embedding(cells * (num_levels + 1), embed_dim)
        self.register_buffer("_cell_offset", torch.arange(cells) * (num_levels + 1), persistent=False)
        self.action_projection = nn.Linear(action_dim, embed_dim)
        # Learned positions, started from sin/cos features: a random start must first discover the 2-D
        # layout that shifting digits needs, which costs thousands of steps on a CPU budget.
        self.spatial_position = nn.Parameter(sincos_position_embedding_2d(embed_dim, *self.grid))
        frame_index = torch.arange(num_frames, dtype=torch.float32)
        self.temporal_position = nn.Parameter(SinusoidalTimeEmbedding(embed_dim, scale=1.0)(frame_index).detach())
        block = SpatioTemporalBlock if attention == "factorized" else JointSpaceTimeBlock
        self.blocks = nn.ModuleList(block(embed_dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.head_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, cells * num_levels)

    def forward(self, tokens: Tensor, actions: Tensor, temporal_mask: TemporalMask = "causal", past: PastFrames | None = None,
                first_frame: int = 0) -> Tensor:
        """Logits of every token's level.

        Args:
            tokens: ``(B, T, H, W)`` integer ids in ``[0, V]`` (``V`` = mask).
            actions: ``(B, T, action_dim)``.
            temporal_mask: ``"causal" | "full" | "identity"`` (see module docstring).
            past: Cached earlier frames from :meth:`encode_past` (causal mask only): ``tokens`` are
                then the frames that follow them, and see them as a causal model would.
            first_frame: Index of ``tokens``' first frame in the sequence (its temporal position),
                without ``past``; e.g. unconditional logits of the future frames alone.

        Returns:
            ``(B, T, H, W, V)`` logits (float32).
        """
        logits, _ = self._run(tokens, actions, temporal_mask, past, first_frame)
        return logits

    @torch.no_grad()
    def encode_past(self, tokens: Tensor, actions: Tensor) -> PastFrames:
        """Runs clean past frames ``(B, P, H, W)`` once (causal), keeping what later frames attend to.

        Under the causal mask nothing in the past depends on later frames, so decoding the future
        step by step can reuse this instead of recomputing the past at every step.
        """
        _, cache = self._run(tokens, actions, "causal", None, 0, keep_cache=True)
        return cache

    def _run(self, tokens: Tensor, actions: Tensor, temporal_mask: TemporalMask, past: PastFrames | None, first_frame: int,
             keep_cache: bool = False) -> tuple[Tensor | None, PastFrames | None]:
        batch, frames, height, width = tokens.shape
        if past is not None:
            if temporal_mask != "causal":
                raise ConfigError("cached past frames need the causal temporal mask")
            first_frame = past.num_frames
        if first_frame + frames > self.num_frames or (height, width) != (self.height, self.width):
            raise ConfigError(
                f"model expects at most {self.num_frames} frames of {self.height}x{self.width} tokens, "
                f"got {first_frame + frames} of {height}x{width}"
            )
        x = self._embed_patches(tokens)
        x = x + self.spatial_position + self.temporal_position[first_frame : first_frame + frames, None, :]
        x = x + self.action_projection(actions.to(x.dtype))[:, :, None, :]
        if past is None:
            mask = temporal_attention_mask(temporal_mask, frames, tokens.device)
        else:  # new frame i sees every cached frame and new frames <= i
            mask = torch.ones(frames, past.num_frames + frames, dtype=torch.bool, device=tokens.device)
            mask[:, past.num_frames :] = torch.ones(frames, frames, dtype=torch.bool, device=tokens.device).tril()
        kept = []
        for index, block in enumerate(self.blocks):
            x, kv = block(x, mask, past.keys_values[index] if past is not None else None)
            if keep_cache:
                kept.append(kv)
        if keep_cache:
            return None, PastFrames(kept, frames)
        logits = self.head(self.head_norm(x)).float()
        return self._unpatchify_logits(logits, batch, frames), None

    def _embed_patches(self, tokens: Tensor) -> Tensor:
        """``(B, T, H, W)`` ids -> ``(B, T, (H/p)(W/p), D)``: per patch, the sum of its tokens' vectors."""
        batch, frames = tokens.shape[:2]
        p, (rows, cols) = self.patch_size, self.grid
        cells = tokens.reshape(batch, frames, rows, p, cols, p).permute(0, 1, 2, 4, 3, 5).reshape(-1, p * p)
        embedded = F.embedding_bag(cells + self._cell_offset, self.token_embedding.weight, mode="sum")
        return embedded.reshape(batch, frames, rows * cols, -1)

    def _unpatchify_logits(self, logits: Tensor, batch: int, frames: int) -> Tensor:
        """``(B, T, (H/p)(W/p), p*p*V)`` -> ``(B, T, H, W, V)``."""
        p, (rows, cols) = self.patch_size, self.grid
        logits = logits.reshape(batch, frames, rows, cols, p, p, self.num_levels).permute(0, 1, 2, 4, 3, 5, 6)
        return logits.reshape(batch, frames, self.height, self.width, self.num_levels)


@dataclass
class PastFrames:
    """Per-layer keys and values of ``P`` clean past frames that later frames attend to: temporal ones
    ``(B * patches, heads, P, D / heads)`` (factorised blocks) or ``(B, heads, P * patches, D / heads)`` (joint)."""

    keys_values: list[tuple[Tensor, Tensor]]
    num_frames: int
