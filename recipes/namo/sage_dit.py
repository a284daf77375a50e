"""The DiT of sage_learning, the codebase namo-fm / namo-diffusion replace, rebuilt from its description.

It differs from genflow's adaLN-Zero :class:`genflow.models.DiT` in five ways, all kept here so a
sage_learning checkpoint computes the same function in genflow (``benchmarks/parity/namo.py``):

- adaptive LayerNorm *without gates*: each block norms its input and applies ``gamma * x + beta``
  (not ``(1 + scale) * x + shift``), and adds the attention / MLP output without a gate. The per-block
  projections time -> (gamma1, beta1, gamma2, beta2) start at zero, so at initialisation every block
  feeds zeros to its attention and MLP;
- a learned position embedding, initialised N(0, 0.02^2);
- the time embedding takes the raw ``t`` in [0, 1] (diffusion too: the sampler passes timestep / T)
  into sinusoids of the model width (frequencies 1 .. 1e-4), then width -> 4 width -> width;
- exact GELU in the MLP, and PyTorch's default initialisation everywhere except the zeroed projections;
- a final LayerNorm with affine weights (eps 1e-5, not adaptive) and a transposed-convolution head
  (kernel = stride = patch), computed here as one matmul with the same weight layout.

Parameter names are genflow's own; :data:`SAGE_PARAMETER_NAMES` maps them to the source's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genflow.models import PatchEmbedding, self_attention

__all__ = ["SageDiT", "sage_parameter_name", "sage_checkpoint_key", "raw_time_sinusoids"]


def raw_time_sinusoids(t: Tensor, dim: int) -> Tensor:
    """``(B,)`` times -> ``(B, dim)`` features ``[sin(t f_k), cos(t f_k)]``, ``f_k = 10000^(-k / (dim/2))``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm without weights over the last axis (biased variance, as nn.LayerNorm)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class SageBlock(nn.Module):
    """Transformer block: ``x + Attn(gamma1 * norm(x) + beta1)``, then ``x + MLP(gamma2 * norm(x) + beta2)``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)  # as nn.MultiheadAttention's in_proj: rows q, k, v
        self.attention_out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp_ratio), nn.GELU(), nn.Linear(width * mlp_ratio, width))
        # nn.MultiheadAttention's initialisation of its input projection: Xavier weights, zero biases
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.attention_out.bias)

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        """``x`` (B, N, D), ``modulation`` (B, 4 D) = gamma1, beta1, gamma2, beta2."""
        gamma1, beta1, gamma2, beta2 = (m[:, None, :] for m in modulation.chunk(4, dim=-1))
        x = x + self_attention(gamma1 * _norm(x) + beta1, qkv=self.qkv, out=self.attention_out, num_heads=self.num_heads)
        return x + self.mlp(gamma2 * _norm(x) + beta2)


class SageDiT(nn.Module):
    """``(x (B, in_channels, S, S), t (B,)) -> (B, out_channels, S, S)``; the module docstring says how it
    differs from :class:`genflow.models.DiT`. Same constructor arguments, so a config picks either."""

    def __init__(self, in_channels: int = 8, out_channels: int = 1, image_size: int = 64, patch_size: int = 4,
                 hidden_size: int = 256, depth: int = 8, num_heads: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        self.patch_embedding = PatchEmbedding(in_channels, hidden_size, patch_size)
        # nn.Conv2d's default initialisation (the source embeds patches with a convolution)
        nn.init.kaiming_uniform_(self.patch_embedding.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * patch_size * patch_size)
        nn.init.uniform_(self.patch_embedding.bias, -bound, bound)
        self.position_embedding = nn.Parameter(torch.randn(1, self.grid_size**2, hidden_size) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.SiLU(),
                                      nn.Linear(4 * hidden_size, hidden_size))
        self.blocks = nn.ModuleList(SageBlock(hidden_size, num_heads) for _ in range(depth))
        self.modulations = nn.ModuleList(nn.Linear(hidden_size, 4 * hidden_size) for _ in range(depth))
        for layer in self.modulations:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.final_norm = nn.LayerNorm(hidden_size)
        # (D, C, p, p): nn.ConvTranspose2d's layout and default initialisation
        self.head_weight = nn.Parameter(torch.empty(hidden_size, out_channels, patch_size, patch_size))
        self.head_bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.head_weight, a=math.sqrt(5))
        fan_in = out_channels * patch_size * patch_size  # what torch computes for a transposed conv's weight
        nn.init.uniform_(self.head_bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is not None:
            raise ValueError("SageDiT takes no condition (model.network.condition_on_target needs the adaln_zero DiT)")
        expected = (self.in_channels, self.image_size, self.image_size)
        if not torch.jit.is_tracing() and (x.ndim != 4 or tuple(x.shape[1:]) != expected or t.shape != (x.shape[0],)):
            raise ValueError(f"SageDiT expected x (B, {', '.join(map(str, expected))}) and t (B,), "
                             f"got {tuple(x.shape)} and {tuple(t.shape)}")
        tokens = self.patch_embedding(x) + self.position_embedding
        time = self.time_mlp(raw_time_sinusoids(t, tokens.shape[-1]).to(tokens.dtype))
        for block, modulation in zip(self.blocks, self.modulations):
            tokens = block(tokens, modulation(time))
        tokens = self.final_norm(tokens)
        # transposed conv with kernel = stride = p: each token writes its own p x p patch of every channel
        batch, g, p, c = x.shape[0], self.grid_size, self.patch_size, self.out_channels
        patches = tokens @ self.head_weight.flatten(1)  # (B, G*G, C*p*p)
        image = patches.reshape(batch, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(batch, c, g * p, g * p)
        return image + self.head_bias[None, :, None, None]


# genflow's parameter name -> sage_learning's (under its Lightning module's `network.`): the port is by name.
_PREFIXES = [
    ("patch_embedding.", "patch_embed.proj."),
    ("position_embedding", "pos_emb"),
    ("time_mlp.", "time_mlp.net."),
    ("modulations.", "ada_proj."),
    ("final_norm.", "norm."),
    ("head_weight", "unpatch.weight"),
    ("head_bias", "unpatch.bias"),
]
_BLOCK_PARTS = [(".qkv.weight", ".attn.in_proj_weight"), (".qkv.bias", ".attn.in_proj_bias"),
                (".attention_out.", ".attn.out_proj."), (".mlp.", ".mlp.")]


def sage_parameter_name(name: str) -> str:
    """genflow's name of a :class:`SageDiT` parameter -> the source network's (``blocks.0.qkv.weight`` ->
    ``blocks.0.attn.in_proj_weight``)."""
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    if name.startswith("blocks."):
        for ours, theirs in _BLOCK_PARTS:
            if ours in name:
                return name.replace(ours, theirs, 1)
    raise KeyError(f"no sage_learning name for SageDiT parameter {name!r}")


def sage_checkpoint_key(name: str) -> str:
    """The key, in a sage_learning Lightning checkpoint's `state_dict` (its module holds the DiT as `network`), of
    the NamoGoalNet parameter `name` (which holds it as `dit`): `dit.pos...` -> `network.pos_emb`."""
    return "network." + sage_parameter_name(name.removeprefix("dit."))
