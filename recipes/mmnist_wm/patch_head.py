"""A patch head that predicts a patch's tokens one after another, and MaskGIT decoding by patches.

With ``p x p`` tokens per transformer position, the separate head predicts every token of a patch
from the same feature vector *independently*: where a digit may sit one or two pixels either way,
each token alone is unsure whether it is ink, and the tokens' draws do not agree on one placement.
:class:`PatchCellDecoder` adds to those logits a recurrent correction over the patch's cells in raster
order, so cell ``c`` is predicted from the features *and* the levels of cells ``< c``: the patch is
a joint (autoregressive) distribution. Training is teacher-forced (the true levels of earlier cells).

:func:`maskgit_decode_patches` decodes with it: MaskGIT over patches instead of tokens. Each step
draws every still-masked patch cell by cell from the decoder, scores it by its mean log-probability
per cell plus annealed Gumbel noise, and fixes the most confident patches, ``ceil(cos(pi/2 k/K) N)``
of the ``N`` generated ones after step ``K - k``, as :func:`genflow.samplers.maskgit.maskgit_decode`
does with tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from genflow.samplers.maskgit import tokens_fixed_after_step

__all__ = ["PatchCellDecoder", "maskgit_decode_patches"]


class PatchCellDecoder(nn.Module):
    """Logit corrections ``(M, cells, V)`` of a patch's cells given features ``(M, D)`` and the levels of earlier cells.

    A GRU cell of width ``width`` runs over the cells in raster order: its state starts from the
    features, and before cell ``c`` it reads the level of cell ``c - 1`` (a start symbol for cell 0)
    and cell ``c``'s place. The output layer starts at zero, so an untrained decoder leaves the
    separate head's logits unchanged.
    """

    def __init__(self, dim: int, cells: int, levels: int, width: int = 64) -> None:
        super().__init__()
        self.cells, self.levels = cells, levels
        self.start = nn.Linear(dim, width)
        self.previous_level = nn.Embedding(levels + 1, width)  # row `levels`: the start symbol
        self.place = nn.Parameter(torch.randn(cells, width) * 0.02)
        self.cell = nn.GRUCell(width, width)
        self.out = nn.Linear(width, levels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor, cell_levels: Tensor) -> Tensor:
        """Teacher-forced corrections: ``features (M, D)``, ``cell_levels (M, cells)`` the true levels."""
        state = torch.tanh(self.start(features))
        previous = torch.full_like(cell_levels[:, 0], self.levels)
        outputs = []
        for c in range(self.cells):
            state = self.cell(self.previous_level(previous) + self.place[c], state)
            outputs.append(self.out(state))
            previous = cell_levels[:, c]
        return torch.stack(outputs, dim=1)

    @torch.no_grad()
    def sample(self, features: Tensor, base_logits: Tensor, *, temperature: float, greedy_level: str,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Draws every cell in order: ``features (M, D)``, ``base_logits (M, cells, V)`` the separate head's.

        Returns the levels ``(M, cells)`` and each patch's summed log-probability ``(M,)``.
        """
        state = torch.tanh(self.start(features))
        previous = torch.full(features.shape[:1], self.levels, dtype=torch.long, device=features.device)
        levels, total = [], torch.zeros(features.shape[0], device=features.device)
        for c in range(self.cells):
            state = self.cell(self.previous_level(previous) + self.place[c], state)
            log_probs = torch.log_softmax((base_logits[:, c] + self.out(state)).float(), dim=-1)
            previous = _draw(log_probs, temperature, greedy_level, generator)
            total = total + log_probs.gather(-1, previous[:, None])[:, 0]
            levels.append(previous)
        return torch.stack(levels, dim=1), total


def _draw(log_probs: Tensor, temperature: float, greedy_level: str, generator: torch.Generator | None) -> Tensor:
    if temperature == 0 and greedy_level == "median":
        return (log_probs.exp().cumsum(dim=-1) < 0.5).sum(dim=-1).clamp_(max=log_probs.shape[-1] - 1)
    if temperature == 0:
        return log_probs.argmax(dim=-1)
    uniform = torch.rand(log_probs.shape, generator=generator).clamp_(1e-12, 1 - 1e-7).to(log_probs.device)
    return (log_probs / temperature - torch.log(-torch.log(uniform))).argmax(dim=-1)


@torch.no_grad()
def maskgit_decode_patches(
    sample_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    patches: Tensor,
    masked: Tensor,
    *,
    steps: int,
    confidence_noise: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Fills every masked patch of ``patches`` ``(B, N, cells)``; ``masked (B, N)`` marks the ones to generate.

    ``sample_fn(patches, still_masked)`` runs the network on the current patches and returns, for
    every patch, drawn levels ``(B, N, cells)`` and their mean log-probability per cell ``(B, N)``.
    """
    if steps < 1 or confidence_noise < 0 or masked.ndim != 2:
        raise ValueError("steps must be >= 1, confidence_noise >= 0 and masked (B, N)")
    current, still = patches.clone(), masked.clone()
    num_patches, given = masked.sum(dim=1), (~masked).sum(dim=1)
    for step in range(steps):
        if not bool(still.any()):
            break
        drawn, confidence = sample_fn(current, still)
        noise_scale = confidence_noise * (1 - (step + 1) / steps)
        if noise_scale > 0:
            uniform = torch.rand(confidence.shape, generator=generator).clamp_(1e-12, 1 - 1e-7).to(confidence.device)
            confidence = confidence - noise_scale * torch.log(-torch.log(uniform))
        confidence = confidence.masked_fill(~still, float("inf"))  # fixed and given patches rank first
        total = torch.tensor([tokens_fixed_after_step(step, steps, int(n)) for n in num_patches], device=patches.device)
        rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)
        newly = (rank < (given + total)[:, None]) & still
        current = torch.where(newly[..., None], drawn.to(current.dtype), current)
        still = still & ~newly
    return current
