"""Masked discrete diffusion on token videos (CoPilot4D / MaskGIT training objectives).

A batch of token videos ``(B, T, H, W)`` is corrupted by replacing some tokens with the mask token;
the network predicts every token's level and is trained by cross-entropy on the tokens the task
scores. One task is drawn per batch (the temporal attention mask is shared by the batch):

- ``future`` (future prediction): the first ``num_past`` frames stay clean; each future token is
  masked with probability ``r ~ U(r_min, r_max)`` drawn per sequence; causal temporal attention;
  loss on all future tokens (as the source system). With ``full_mask_probability`` q, a sequence's
  whole future is masked (r = 1) with probability q instead: the case where nothing of the future
  is visible and only the dynamics can tell where the digits are (the first MaskGIT step, and
  expected-intensity decoding). At r < 1 a few visible future tokens already show where each digit is.
  With ``random_context``, each sequence keeps ``c ~ U{num_past, ..., T - 1}`` clean frames instead
  of ``num_past``, and the frames from ``c`` on are masked and scored: frame ``c`` is then the next
  frame of a clean past, the task of autoregressive (frame by frame) decoding.
- ``joint`` (joint denoising): every frame, past and future, is picked with probability 1/2 and a
  picked frame's tokens are masked with a per-frame ratio ``r``; causal attention; loss on picked frames.
- ``individual`` (individual-frame denoising): every frame masked with a per-frame ratio ``r``;
  *identity* temporal attention, so each frame is denoised on its own. This is the unconditional
  model that classifier-free guidance contrasts with the conditional one.

The objective never sees the network: it corrupts tokens and scores logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.errors import ConfigError

__all__ = ["MASKING_TASKS", "MaskedBatch", "MaskedTokenObjective"]

MASKING_TASKS = ("future", "joint", "individual")
_TEMPORAL_MASK = {"future": "causal", "joint": "causal", "individual": "identity"}


@dataclass
class MaskedBatch:
    """A corrupted batch: ``tokens`` ``(B, T, H, W)`` with mask ids, the temporal attention kind, and
    ``scored`` ``(B, T, H, W)`` bool, the tokens whose cross-entropy counts."""

    task: str
    tokens: Tensor
    temporal_mask: str
    scored: Tensor
    masked: Tensor  # (B, T, H, W) bool, the tokens replaced by the mask id


class MaskedTokenObjective:
    """Draws a masking task per batch and scores the network's logits.

    Args:
        mask_token_id: Id of the mask token (the number of levels, 16).
        num_past: Clean context frames of the ``future`` task.
        task_weights: Probability of each task, e.g. ``{"future": 1.0}`` (the fast recipe) or
            ``{"future": 0.5, "joint": 0.4, "individual": 0.1}`` (the full one).
        mask_ratio: ``(r_min, r_max)`` of the uniform masking ratio.
        full_mask_probability: Probability that a ``future`` sequence has its whole future masked.
        random_context: ``future`` task: draw each sequence's clean frames from ``num_past..T-1``.
    """

    def __init__(
        self,
        mask_token_id: int = 16,
        num_past: int = 10,
        task_weights: dict[str, float] | None = None,
        mask_ratio: tuple[float, float] = (0.5, 1.0),
        full_mask_probability: float = 0.0,
        random_context: bool = False,
    ) -> None:
        weights = dict(task_weights or {"future": 1.0})
        unknown = sorted(set(weights) - set(MASKING_TASKS))
        if unknown:
            raise ConfigError(f"objective.task_weights: unknown task(s) {', '.join(unknown)} (known: {', '.join(MASKING_TASKS)})")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"objective.task_weights must be non-negative with a positive sum, got {weights}")
        low, high = mask_ratio
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"objective.mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio}")
        if not 0.0 <= full_mask_probability <= 1.0:
            raise ConfigError(f"objective.full_mask_probability must be in [0, 1], got {full_mask_probability}")
        self.full_mask_probability = full_mask_probability
        self.random_context = random_context
        self.mask_token_id = mask_token_id
        self.num_past = num_past
        self.tasks = [task for task in MASKING_TASKS if weights.get(task, 0) > 0]
        total = sum(weights[t] for t in self.tasks)
        self.task_cdf = torch.tensor([weights[t] for t in self.tasks], dtype=torch.float64).cumsum(0) / total
        self.mask_ratio = (low, high)

    def pick_task(self, uniform: float) -> str:
        """The task for a batch given one ``U[0, 1)`` draw (shared by all processes of a step)."""
        index = int(torch.searchsorted(self.task_cdf, torch.tensor([uniform], dtype=torch.float64), right=True))
        return self.tasks[min(index, len(self.tasks) - 1)]

    def corrupt(self, tokens: Tensor, task: str, noise: Tensor, frame_noise: Tensor) -> MaskedBatch:
        """Masks ``tokens`` ``(B, T, H, W)`` for ``task``.

        Args:
            noise: ``(B, T, H, W)`` uniform [0, 1) draws, one per token.
            frame_noise: ``(B, T, 2)`` uniform draws per frame (its ratio, and whether it is picked).
        """
        batch, frames = tokens.shape[:2]
        if task not in _TEMPORAL_MASK:
            raise ConfigError(f"unknown masking task '{task}' (known: {', '.join(MASKING_TASKS)})")
        if task == "future" and not 0 < self.num_past < frames:
            raise ConfigError(f"num_past ({self.num_past}) must be between 1 and the number of frames - 1 ({frames - 1})")
        low, high = self.mask_ratio
        ratio = low + (high - low) * frame_noise[..., 0]  # (B, T)
        if task == "future":
            whole = frame_noise[:, :1, 1] < self.full_mask_probability  # (B, 1): the whole future masked
            ratio = torch.where(whole, torch.ones_like(ratio[:, :1]), ratio[:, :1]).expand(batch, frames)  # one per sequence
            context = torch.full((batch, 1), self.num_past, device=tokens.device)
            if self.random_context:  # c in num_past..frames-1, from frame 1's second draw
                choices = frames - self.num_past
                context = context + (frame_noise[:, 1:2, 1] * choices).long().clamp(max=choices - 1)
            picked = torch.arange(frames, device=tokens.device)[None, :] >= context
        elif task == "joint":
            picked = frame_noise[..., 1] < 0.5
        else:
            picked = torch.ones(batch, frames, dtype=torch.bool, device=tokens.device)
        masked = (noise < ratio[:, :, None, None]) & picked[:, :, None, None]
        corrupted = torch.where(masked, torch.full_like(tokens, self.mask_token_id), tokens)
        scored = picked[:, :, None, None].expand_as(tokens)
        return MaskedBatch(task, corrupted, _TEMPORAL_MASK[task], scored, masked)

    def loss(self, logits: Tensor, tokens: Tensor, batch: MaskedBatch) -> Tensor:
        """Mean cross-entropy of ``logits`` ``(B, T, H, W, V)`` over the scored tokens."""
        scored = batch.scored
        if not bool(scored.any()):
            return logits.sum() * 0.0  # nothing picked this batch (joint task, tiny batch): no signal
        return F.cross_entropy(logits[scored].float(), tokens[scored].long())
