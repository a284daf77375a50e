"""Spatio-temporal transformer over frames of discrete tokens (CoPilot4D's world model, small scale).

A video of ``T`` frames of ``H x W`` tokens is embedded patch by patch: each transformer position
holds a ``p x p`` patch of tokens (``patch_size`` p; 1 = one position per token, as copilot4D's model), its
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

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.errors import ConfigError
from genflow.models.dit import sincos_position_embedding_2d
from genflow.models.embeddings import SinusoidalTimeEmbedding
from genflow_recipes.mmnist_wm.patch_head import PatchCellDecoder

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
    def __init__(self, dim: int, num_heads: int, upcast_on_cpu: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.upcast_on_cpu = upcast_on_cpu
        self.dropout = dropout  # on the attention probabilities, in training
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
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                  dropout_p=self.dropout if self.training else 0.0).to(qkv.dtype)
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim)), (own_key, own_value)


def _mlp(dim: int, mlp_ratio: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _run_mlp(mlp: nn.Sequential, x: Tensor, dropout: float, training: bool) -> Tensor:
    """``mlp`` with dropout after the activation and after the output (the source's), in training."""
    if not (dropout and training):
        return mlp(x)
    hidden = F.dropout(mlp[1](mlp[0](x)), dropout, training=True)
    return F.dropout(mlp[2](hidden), dropout, training=True)


class SpatioTemporalBlock(nn.Module):
    """Pre-norm [spatial attention -> temporal attention -> MLP], each residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.spatial_norm = nn.LayerNorm(dim)
        self.spatial_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True, dropout=dropout)
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal_attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True, dropout=dropout)
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
        temporal = temporal + _run_mlp(self.mlp, self.mlp_norm(temporal), self.dropout, self.training)
        return temporal.reshape(batch, tokens, frames, dim).transpose(1, 2), kv


class JointSpaceTimeBlock(nn.Module):
    """Pre-norm [attention over every patch of every frame -> MLP], each residual.

    One attention over all ``T * N`` positions under the frame-level temporal mask (a position of
    frame i sees every position of the frames i may see): a future patch reads any place of any
    earlier frame in one hop, where the factorised block needs a spatial and a temporal hop to
    follow a moving digit. It costs attention over ``T * N`` positions instead of ``N`` and ``T``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.attention = _SelfAttention(dim, num_heads, upcast_on_cpu=True, dropout=dropout)
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
        flat = flat + _run_mlp(self.mlp, self.mlp_norm(flat), self.dropout, self.training)
        return flat.reshape(batch, frames, tokens, dim), kv


ATTENTION_KINDS = ("factorized", "joint")
HEAD_KINDS = ("separate", "tied")
TEMPORAL_POSITIONS = ("learned", "sinusoid")
INITS = ("genflow", "copilot4d")
PATCH_HEADS = ("independent", "autoregressive")


def frame_sinusoids(dim: int, num_frames: int) -> Tensor:
    """``(num_frames, dim)`` fixed features of frame ``t``: ``[sin(t w_i), cos(t w_i)]`` with
    ``w_i = 10000^(-i / (dim/2 - 1))``, ``i < dim/2`` (copilot4D's temporal positions)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32))
    angles = torch.arange(num_frames, dtype=torch.float32)[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class SimpleVideoTransformer(nn.Module):
    """Predicts token levels of every frame of a (partly masked) token video, given per-frame actions.

    Args:
        num_levels: Token levels ``V`` (16); the input vocabulary adds one mask token with id ``V``.
        num_frames: Frames ``T`` the temporal positions cover (shorter inputs use the first ones).
        height, width: Tokens per frame side.
        embed_dim: Token width ``D``.
        num_layers: Spatio-temporal blocks.
        num_heads: Attention heads (divides ``D``).
        action_dim: Size of a frame's action vector (2: ``[dx, dy]``).
        mlp_ratio: MLP width as a multiple of ``D``.
        patch_size: Tokens per side of the patch one transformer position holds (divides ``height``
            and ``width``); 1 = one position per token, as copilot4D's model.
        attention: ``"factorized"`` (copilot4D's: spatial, then temporal attention per layer) or
            ``"joint"`` (one attention over all positions of all frames; affordable with patches).
        head: ``"separate"`` (a linear layer with bias predicting the ``p * p`` tokens' levels) or
            ``"tied"`` (copilot4D's: logits are the normalised features times the token embedding
            table, no bias, one class per embedding row; patch size 1 only).
        vocab_size: Embedding rows minus one, the last row being the mask (copilot4D's ``vocab_size``;
            patch size 1 only). None: ``num_levels``. copilot4D's fast script passes 17: 18 rows, an
            unused row 16 and the mask at 17; input id ``num_levels`` (genflow's mask) reads that last row.
        temporal_position: ``"learned"`` (a table started from sinusoids) or ``"sinusoid"`` (fixed
            sin/cos of the frame index, copilot4D's: sines first, frequencies ``10000^(-i / (D/2 - 1))``).
        dropout: Dropout on attention probabilities and after the MLP's activation and output (training only).
        init: ``"genflow"`` (PyTorch's defaults, spatial positions started from 2-D sin/cos features) or
            ``"copilot4d"`` (Xavier-uniform linear weights, zero biases, embeddings and spatial
            positions ~ N(0, 0.02^2)).
        patch_head: ``"independent"`` (every token of a patch from the features alone) or
            ``"autoregressive"`` (:class:`~genflow_recipes.mmnist_wm.patch_head.PatchCellDecoder`: each
            cell also from the levels of the patch's earlier cells; patch size > 1).
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
        *,
        head: str = "separate",
        vocab_size: int | None = None,
        temporal_position: str = "learned",
        dropout: float = 0.0,
        init: str = "genflow",
        patch_head: str = "independent",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"model.embed_dim ({embed_dim}) must be divisible by model.num_heads ({num_heads})")
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ConfigError(f"model.patch_size ({patch_size}) must be >= 1 and divide the frame size ({height}x{width})")
        for key, value, allowed in (("attention", attention, ATTENTION_KINDS), ("head", head, HEAD_KINDS),
                                    ("temporal_position", temporal_position, TEMPORAL_POSITIONS), ("init", init, INITS),
                                    ("patch_head", patch_head, PATCH_HEADS)):
            if value not in allowed:
                raise ConfigError(f"model.{key} must be one of {', '.join(allowed)}, got '{value}'")
        vocab_size = num_levels if vocab_size is None else vocab_size
        if patch_size > 1 and (head == "tied" or vocab_size != num_levels):
            raise ConfigError("model.head: tied and model.vocab_size need model.patch_size 1 (one position per token)")
        if patch_head == "autoregressive" and (patch_size == 1 or head != "separate"):
            raise ConfigError("model.patch_head: autoregressive needs model.patch_size > 1 and model.head: separate")
        if vocab_size < num_levels:
            raise ConfigError(f"model.vocab_size ({vocab_size}) must be at least the {num_levels} levels")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
        self.num_levels = num_levels
        self.mask_token_id = num_levels
        self.mask_row = vocab_size  # the embedding row the mask id reads
        self.num_classes = vocab_size + 1 if head == "tied" else num_levels  # logits per token
        self.num_frames = num_frames
        self.height, self.width = height, width
        self.patch_size = patch_size
        self.grid = (height // patch_size, width // patch_size)
        cells = patch_size * patch_size
        # one vector per (place in the patch, level incl. mask); a patch's embedding is their sum
        self.token_embedding = nn.Embedding(cells * (vocab_size + 1), embed_dim)
        self.register_buffer("_cell_offset", torch.arange(cells) * (vocab_size + 1), persistent=False)
        self.action_projection = nn.Linear(action_dim, embed_dim)
        # Learned positions, started from sin/cos features: a random start must first discover the 2-D
        # layout that shifting digits needs, which costs thousands of steps on a CPU budget.
        self.spatial_position = nn.Parameter(sincos_position_embedding_2d(embed_dim, *self.grid))
        frame_index = torch.arange(num_frames, dtype=torch.float32)
        if temporal_position == "learned":
            self.temporal_position = nn.Parameter(SinusoidalTimeEmbedding(embed_dim, scale=1.0)(frame_index).detach())
        else:  # a function of the sizes: not saved
            self.register_buffer("temporal_position", frame_sinusoids(embed_dim, num_frames), persistent=False)
        block = SpatioTemporalBlock if attention == "factorized" else JointSpaceTimeBlock
        self.blocks = nn.ModuleList(block(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers))
        self.head_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, cells * num_levels) if head == "separate" else None
        self.cell_decoder = PatchCellDecoder(embed_dim, cells, num_levels) if patch_head == "autoregressive" else None
        if init == "copilot4d":
            self._init_as_copilot4d()

    def _init_as_copilot4d(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.spatial_position.normal_(std=0.02)

    def forward(self, tokens: Tensor, actions: Tensor, temporal_mask: TemporalMask = "causal", past: PastFrames | None = None,
                first_frame: int = 0, targets: Tensor | None = None) -> Tensor:
        """Logits of every token's level.

        Args:
            tokens: ``(B, T, H, W)`` integer ids in ``[0, V]`` (``V`` = mask).
            actions: ``(B, T, action_dim)``.
            temporal_mask: ``"causal" | "full" | "identity"`` (see module docstring).
            past: Cached earlier frames from :meth:`encode_past` (causal mask only): ``tokens`` are
                then the frames that follow them, and see them as a causal model would.
            first_frame: Index of ``tokens``' first frame in the sequence (its temporal position),
                without ``past``; e.g. unconditional logits of the future frames alone.
            targets: ``(B, T, H, W)`` levels: with the autoregressive patch head (required there), each
                cell's logits are conditional on the target levels of the earlier cells of its patch.

        Returns:
            ``(B, T, H, W, C)`` logits (float32), ``C`` = :attr:`num_classes`.
        """
        features, _ = self._run(tokens, actions, temporal_mask, past, first_frame)
        batch, frames = tokens.shape[:2]
        if self.cell_decoder is None:
            return self._unpatchify_logits(self.head_logits(features), batch, frames)
        if targets is None:
            raise ConfigError("model.patch_head autoregressive: its logits are conditional on the earlier cells of each "
                              "patch; pass the target tokens (teacher forcing) or decode with patch_logits / the recipe")
        return self._unpatchify_logits(self.patch_logits(features, self.patchify(targets)), batch, frames)

    def features(self, tokens: Tensor, actions: Tensor, temporal_mask: TemporalMask = "causal", past: PastFrames | None = None,
                 first_frame: int = 0) -> Tensor:
        """The normalised features ``(B, T, (H/p)(W/p), D)`` the head reads, one per patch."""
        return self._run(tokens, actions, temporal_mask, past, first_frame)[0]

    def head_logits(self, features: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(features).float()
        return (features @ self.token_embedding.weight.t().to(features.dtype)).float()

    def patch_logits(self, features: Tensor, cell_levels: Tensor) -> Tensor:
        """Logits ``(..., p*p*V)`` of each patch's cells given ``features (..., D)`` and, for the autoregressive
        patch head, the levels ``(..., p*p)`` of its cells (each cell's logits read only the earlier ones)."""
        logits = self.head_logits(features)
        if self.cell_decoder is None:
            return logits
        flat = features.reshape(-1, features.shape[-1])
        correction = self.cell_decoder(flat, cell_levels.reshape(flat.shape[0], -1).long()).float()
        return logits + correction.reshape(logits.shape)

    def patchify(self, tokens: Tensor) -> Tensor:
        """``(B, T, H, W)`` -> ``(B, T, (H/p)(W/p), p*p)``, each patch's cells in raster order."""
        batch, frames = tokens.shape[:2]
        p, (rows, cols) = self.patch_size, self.grid
        return tokens.reshape(batch, frames, rows, p, cols, p).permute(0, 1, 2, 4, 3, 5).reshape(batch, frames, rows * cols, p * p)

    def unpatchify(self, cells: Tensor) -> Tensor:
        """Inverse of :meth:`patchify`."""
        batch, frames = cells.shape[:2]
        p, (rows, cols) = self.patch_size, self.grid
        return cells.reshape(batch, frames, rows, cols, p, p).permute(0, 1, 2, 4, 3, 5).reshape(batch, frames, self.height, self.width)

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
        return self.head_norm(x), None

    def _embed_patches(self, tokens: Tensor) -> Tensor:
        """``(B, T, H, W)`` ids -> ``(B, T, (H/p)(W/p), D)``: per patch, the sum of its tokens' vectors."""
        batch, frames = tokens.shape[:2]
        p, (rows, cols) = self.patch_size, self.grid
        if self.mask_row != self.mask_token_id:
            tokens = torch.where(tokens == self.mask_token_id, self.mask_row, tokens)
        cells = tokens.reshape(batch, frames, rows, p, cols, p).permute(0, 1, 2, 4, 3, 5).reshape(-1, p * p)
        embedded = F.embedding_bag(cells + self._cell_offset, self.token_embedding.weight, mode="sum")
        return embedded.reshape(batch, frames, rows * cols, -1)

    def _unpatchify_logits(self, logits: Tensor, batch: int, frames: int) -> Tensor:
        """``(B, T, (H/p)(W/p), p*p*C)`` -> ``(B, T, H, W, C)``, ``C`` = :attr:`num_classes`."""
        p, (rows, cols) = self.patch_size, self.grid
        logits = logits.reshape(batch, frames, rows, cols, p, p, self.num_classes).permute(0, 1, 2, 4, 3, 5, 6)
        return logits.reshape(batch, frames, self.height, self.width, self.num_classes)


@dataclass
class PastFrames:
    """Per-layer keys and values of ``P`` clean past frames that later frames attend to: temporal ones
    ``(B * patches, heads, P, D / heads)`` (factorised blocks) or ``(B, heads, P * patches, D / heads)`` (joint)."""

    keys_values: list[tuple[Tensor, Tensor]]
    num_frames: int
