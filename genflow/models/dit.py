"""Diffusion Transformer (DiT, Peebles & Xie 2023) for images.

The image is cut into ``patch_size x patch_size`` patches, each patch becomes a token, and a stack of
transformer blocks processes the tokens with adaptive LayerNorm conditioned on the time embedding.
As in the paper's adaLN-Zero variant, every block's modulation (shift, scale, gate) and the final
linear layer start at zero: each block is then the identity and the network outputs exactly zero, so
training starts from a stable, residual-free state and opens the gates gradually.

genflow uses it to generate one image-like channel (e.g. a goal mask) from noise, given context
channels concatenated to the noisy input: ``in_channels = noisy channels + context channels``.
The network only sees a time ``t`` in [0, 1]; diffusion objectives pass ``timestep / T``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.errors import ConfigError
from genflow.models.embeddings import TimestepMLP

__all__ = ["DiT", "DiTBlock", "PatchEmbedding", "check_dit_sizes", "self_attention", "sincos_position_embedding_2d"]


def sincos_position_embedding_2d(dim: int, grid_size: int, width: int | None = None) -> Tensor:
    """Fixed 2-D sin/cos position features of a grid of tokens (row-major, as the patches).

    Half of the features encode the row, half the column, each with 1-D transformer sinusoids.

    Args:
        dim: Feature size, divisible by 4.
        grid_size: Tokens per side ``G`` (rows).
        width: Tokens per row if the grid is not square (default ``G``).

    Returns:
        Features, shape ``(G * width, dim)``, float32.
    """
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_size, dtype=torch.float64),
                                torch.arange(width or grid_size, dtype=torch.float64), indexing="ij")

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * frequencies[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``(B, D)`` values broadcast over tokens ``(B, N, D)``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def self_attention(x: Tensor, *, qkv: nn.Linear, out: nn.Linear, num_heads: int) -> Tensor:
    """Multi-head self-attention over tokens ``(B, N, D) -> (B, N, D)``: ``qkv`` maps D -> 3D with rows
    q, k, v (``nn.MultiheadAttention``'s ``in_proj`` layout), each split head-major, ``out`` maps D -> D."""
    batch, tokens, width = x.shape
    # (B, N, 3D) -> 3 x (B, heads, N, D / heads)
    q, k, v = qkv(x).reshape(batch, tokens, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(q, k, v)
    return out(attended.transpose(1, 2).reshape(batch, tokens, width))


class PatchEmbedding(nn.Module):
    """Non-overlapping p x p patches of `(B, C, H, W)` -> tokens `(B, H/p * W/p, D)`, row-major.

    The same map as `Conv2d(C, D, kernel_size=p, stride=p)` (same parameter names and shapes, so
    checkpoints of either load), computed as patchify + one matmul. Why not the convolution: on a CPU
    with AMX, torch 2.13's bf16 convolution with an 8 x 8 kernel returned results 110 % off the fp32
    ones (measured; bf16 rounding alone gives 0.3 %), so a DiT trained under bf16 autocast learned a
    function its fp32 evaluation did not compute. The matmul path is right in bf16 on every CPU.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.empty(hidden_size, in_channels, patch_size, patch_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        nn.init.xavier_uniform_(self.weight.view(hidden_size, -1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        return F.linear(patches, self.weight.flatten(1), self.bias)


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning.

    ``x + gate_a * Attn(modulate(LN(x)))``, then ``x + gate_m * MLP(modulate(LN(x)))``, with the six
    shift/scale/gate vectors computed from the conditioning vector.

    Args:
        hidden_size: Token width ``D``.
        num_heads: Attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention over tokens ``(B, N, D) -> (B, N, D)``."""
        return self_attention(x, qkv=self.qkv, out=self.attention_out, num_heads=self.num_heads)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Tokens, shape ``(B, N, D)``.
            cond: Conditioning, shape ``(B, D)``.

        Returns:
            Tokens, shape ``(B, N, D)``.
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(cond).chunk(6, dim=-1)
        x = x + gate_a[:, None, :] * self.attention(_modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None, :] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    """Diffusion Transformer: ``(x (B, in_channels, H, W), t (B,)) -> (B, out_channels, H, W)``.

    ``H = W = image_size``; the position embedding is fixed to that grid.

    Args:
        in_channels: Input channels (noisy target channels plus any context channels).
        out_channels: Output channels (what the objective predicts: noise, velocity or clean sample).
        image_size: Height and width of the input.
        patch_size: Side of a square patch; must divide ``image_size``.
        hidden_size: Token width; divisible by ``num_heads`` and by 4 (2-D sin/cos positions).
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``hidden_size``.
        condition_dim: Size of an optional per-sample condition vector (0: none). An MLP maps it to
            the token width and adds it to the time embedding, so it steers every adaLN layer.

    Raises:
        ConfigError: Sizes that do not fit together (named as ``model.network.<option>``).
    """

    def __init__(
        self,
        in_channels: int = 8,
        out_channels: int = 1,
        image_size: int = 64,
        patch_size: int = 4,
        hidden_size: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        condition_dim: int = 0,
    ) -> None:
        super().__init__()
        check_dit_sizes(
            in_channels=in_channels,
            out_channels=out_channels,
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size

        self.patch_embedding = PatchEmbedding(in_channels, hidden_size, patch_size)
        # not saved: a pure function of the sizes, rebuilt identically on load
        self.register_buffer(
            "position_embedding", sincos_position_embedding_2d(hidden_size, self.grid_size)[None], persistent=False
        )
        self.time_embedding = TimestepMLP(hidden_size, frequency_dim=256)
        self.condition_dim = condition_dim
        self.condition_embedding = (
            nn.Sequential(nn.Linear(condition_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if condition_dim else None
        )
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.final_linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self._initialize()

    def _initialize(self) -> None:
        """DiT's initialisation: Xavier linear layers, N(0, 0.02) time MLP, and the adaLN-Zero zeros."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # the patch embedding is a linear map of flattened patches, so initialise it like one
        weight = self.patch_embedding.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for layer in self.time_embedding.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        zeroed = [block.modulation[-1] for block in self.blocks]
        zeroed += [self.final_modulation[-1], self.final_linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Reassemble per-patch outputs ``(B, G*G, p*p*C)`` into images ``(B, C, G*p, G*p)``."""
        batch, grid, patch, channels = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        x = tokens.reshape(batch, grid, grid, patch, patch, channels)
        # (B, gh, gw, ph, pw, C) -> (B, C, gh, ph, gw, pw)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid * patch, grid * patch)

    def forward(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        """Evaluate the network.

        Args:
            x: Inputs, shape ``(B, in_channels, image_size, image_size)``.
            t: Times in [0, 1], shape ``(B,)``.
            condition: ``(B, condition_dim)`` when the network was built with a ``condition_dim``.

        Returns:
            Outputs, shape ``(B, out_channels, image_size, image_size)``.

        Raises:
            ValueError: Inputs or times of the wrong shape.
        """
        # skipped while tracing for ONNX: shapes are then tensors and the checks only produce warnings
        if not torch.jit.is_tracing():
            expected = (self.in_channels, self.image_size, self.image_size)
            if x.ndim != 4 or tuple(x.shape[1:]) != expected:
                shape = ", ".join(map(str, expected))
                raise ValueError(f"DiT expected input of shape (B, {shape}), got {tuple(x.shape)}")
            if t.shape != (x.shape[0],):
                raise ValueError(f"DiT expected times of shape ({x.shape[0]},), got {tuple(t.shape)}")
            if (condition is None) != (self.condition_embedding is None) or (
                    condition is not None and condition.shape != (x.shape[0], self.condition_dim)):
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(f"DiT expected a condition of shape ({x.shape[0]}, {self.condition_dim}), got {got}"
                                 if self.condition_dim else f"DiT was built without a condition, got {got}")
        h = self.patch_embedding(x) + self.position_embedding  # (B, C, H, W) -> (B, G*G, D)
        cond = self.time_embedding(t)
        if self.condition_embedding is not None:
            cond = cond + self.condition_embedding(condition.to(cond.dtype))
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.unpatchify(self.final_linear(_modulate(self.final_norm(h), shift, scale)))


def check_dit_sizes(**sizes: float) -> None:
    """Raise a one-line ConfigError for the first option that does not fit."""
    for name in ("in_channels", "out_channels", "image_size", "patch_size", "hidden_size", "depth", "num_heads"):
        if not isinstance(sizes[name], int) or sizes[name] < 1:
            raise ConfigError(f"model.network.{name}={sizes[name]!r} must be a positive integer")
    ratio = sizes["mlp_ratio"]
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"model.network.mlp_ratio={sizes['mlp_ratio']!r} must be a positive number")
    if sizes["image_size"] % sizes["patch_size"]:
        raise ConfigError(
            f"model.network.patch_size={sizes['patch_size']} must divide image_size={sizes['image_size']}"
        )
    if sizes["hidden_size"] % sizes["num_heads"]:
        raise ConfigError(
            f"model.network.num_heads={sizes['num_heads']} must divide hidden_size={sizes['hidden_size']}"
        )
    if sizes["hidden_size"] % 4:
        raise ConfigError(
            f"model.network.hidden_size={sizes['hidden_size']} must be divisible by 4 (2-D sin/cos positions)"
        )
