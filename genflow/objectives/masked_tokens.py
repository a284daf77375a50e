"""Masked discrete diffusion on token videos (CoPilot4D / MaskGIT training objectives).

A batch of token videos ``(B, T, H, W)`` is corrupted by replacing some tokens with the mask token;
the network predicts every token's level and is trained by cross-entropy on the tokens the task
scores. One task is drawn per batch (the temporal attention mask is shared by the batch):

- ``future`` (future prediction): the first ``num_past`` frames stay clean; each future token is
  masked with probability ``r ~ U(r_min, r_max)`` drawn per sequence; causal temporal attention;
  loss on all future tokens (as copilot4D's fast script, which draws one r per batch). With ``full_mask_probability`` q, a sequence's
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

Switches that reproduce copilot4D's full mode (the defaults are genflow's choices above):

- ``mask_schedule``: ``uniform`` (r ~ U(r_min, r_max)) or ``cosine`` (r = cos(u pi / 2), u ~ U(0, 1)).
- ``ratio_per``: ``sequence`` (as above: per sequence for ``future``, per frame otherwise) or ``batch``
  (one r for the whole batch).
- ``mask_count``: ``bernoulli`` (each token masked with probability r) or ``exact`` (``ceil(r n)`` of the
  ``n`` tokens of each unit: a sequence's future, a whole sequence for ``joint_frames: all``, a frame otherwise).
- ``random_tokens`` eta: a batch draws ``u ~ U(0, 1)`` and ``floor(u eta m)`` of the ``m`` unmasked tokens
  of each unit (bernoulli: each with probability ``u eta``) become uniformly random levels.
- ``joint_frames`` (``random``: each frame picked with probability 1/2; ``all``) and ``joint_attention``
  (``causal`` or ``full``, bidirectional).
- ``loss_on``: ``task`` (the frames the task masks) or ``all`` (every token of every frame); ``label_smoothing``.

The objective never sees the network: it corrupts tokens and scores logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.errors import ConfigError

__all__ = ["MASKING_TASKS", "MaskedBatch", "MaskedTokenObjective"]

MASKING_TASKS = ("future", "joint", "individual")
_CHOICES = {"mask_schedule": ("uniform", "cosine"), "ratio_per": ("sequence", "batch"), "mask_count": ("bernoulli", "exact"),
            "joint_frames": ("random", "all"), "joint_attention": ("causal", "full"), "loss_on": ("task", "all")}


@dataclass
class MaskedBatch:
    """A corrupted batch: ``tokens`` ``(B, T, H, W)`` with mask ids, the temporal attention kind, and
    ``scored`` ``(B, T, H, W)`` bool, the tokens whose cross-entropy counts."""

    task: str
    tokens: Tensor
    temporal_mask: str
    scored: Tensor
    masked: Tensor  # (B, T, H, W) bool, the tokens replaced by the mask id
    replaced: Tensor | None = None  # (B, T, H, W) bool, the tokens replaced by random levels


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
        mask_schedule, ratio_per, mask_count, random_tokens, joint_frames, joint_attention, loss_on,
            label_smoothing: see the module docstring.
    """

    def __init__(
        self,
        mask_token_id: int = 16,
        num_past: int = 10,
        task_weights: dict[str, float] | None = None,
        mask_ratio: tuple[float, float] = (0.5, 1.0),
        full_mask_probability: float = 0.0,
        random_context: bool = False,
        *,
        mask_schedule: str = "uniform",
        ratio_per: str = "sequence",
        mask_count: str = "bernoulli",
        random_tokens: float = 0.0,
        joint_frames: str = "random",
        joint_attention: str = "causal",
        loss_on: str = "task",
        label_smoothing: float = 0.0,
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
        choices = {"mask_schedule": mask_schedule, "ratio_per": ratio_per, "mask_count": mask_count,
                   "joint_frames": joint_frames, "joint_attention": joint_attention, "loss_on": loss_on}
        for key, value in choices.items():
            if value not in _CHOICES[key]:
                raise ConfigError(f"objective.{key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        if not 0.0 <= random_tokens <= 1.0 or not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"objective.random_tokens must be in [0, 1] and objective.label_smoothing in [0, 1), "
                              f"got {random_tokens} and {label_smoothing}")
        self.full_mask_probability = full_mask_probability
        self.random_context = random_context
        self.mask_token_id = mask_token_id
        self.num_past = num_past
        self.tasks = [task for task in MASKING_TASKS if weights.get(task, 0) > 0]
        total = sum(weights[t] for t in self.tasks)
        self.task_cdf = torch.tensor([weights[t] for t in self.tasks], dtype=torch.float64).cumsum(0) / total
        self.mask_ratio = (low, high)
        self.mask_schedule, self.ratio_per, self.mask_count = mask_schedule, ratio_per, mask_count
        self.random_tokens, self.label_smoothing = random_tokens, label_smoothing
        self.joint_frames, self.joint_attention, self.loss_on = joint_frames, joint_attention, loss_on

    def pick_task(self, uniform: float) -> str:
        """The task for a batch given one ``U[0, 1)`` draw (shared by all processes of a step)."""
        index = int(torch.searchsorted(self.task_cdf, torch.tensor([uniform], dtype=torch.float64), right=True))
        return self.tasks[min(index, len(self.tasks) - 1)]

    def temporal_mask(self, task: str) -> str:
        """The temporal attention of ``task``: ``causal``, ``full`` or ``identity``."""
        return {"future": "causal", "joint": self.joint_attention, "individual": "identity"}[task]

    def _ratio(self, uniform: Tensor) -> Tensor:
        if self.mask_schedule == "cosine":
            return torch.cos(uniform * (math.pi / 2))
        low, high = self.mask_ratio
        return low + (high - low) * uniform

    def corrupt(self, tokens: Tensor, task: str, noise: Tensor, frame_noise: Tensor, *,
                batch_draw: float | None = None, level_noise: Tensor | None = None,
                random_fraction: float | None = None) -> MaskedBatch:
        """Masks ``tokens`` ``(B, T, H, W)`` for ``task``.

        Args:
            noise: ``(B, T, H, W)`` uniform [0, 1) draws, one per token (which tokens are masked).
            frame_noise: ``(B, T, 2)`` uniform draws per frame (its ratio, and whether it is picked).
            batch_draw: One ``U[0, 1)`` draw giving the batch's ratio (``ratio_per: batch``; the same on every process).
            level_noise: ``(B, T, H, W)`` uniform draws, the random levels (needed when ``random_tokens > 0``).
            random_fraction: One ``U[0, 1)`` draw scaling ``random_tokens`` for this batch.
        """
        batch, frames = tokens.shape[:2]
        if task not in MASKING_TASKS:
            raise ConfigError(f"unknown masking task '{task}' (known: {', '.join(MASKING_TASKS)})")
        if task == "future" and not 0 < self.num_past < frames:
            raise ConfigError(f"num_past ({self.num_past}) must be between 1 and the number of frames - 1 ({frames - 1})")
        if self.ratio_per == "sequence":
            uniform = frame_noise[..., 0]
        elif batch_draw is None:
            raise ConfigError("objective.ratio_per: batch needs one batch_draw per batch")
        else:
            uniform = torch.full((batch, frames), float(batch_draw), device=tokens.device)
        ratio = self._ratio(uniform)  # (B, T)
        if task == "future":
            whole = frame_noise[:, :1, 1] < self.full_mask_probability  # (B, 1): the whole future masked
            ratio = torch.where(whole, torch.ones_like(ratio[:, :1]), ratio[:, :1]).expand(batch, frames)  # one per sequence
            context = torch.full((batch, 1), self.num_past, device=tokens.device)
            if self.random_context:  # c in num_past..frames-1, from frame 1's second draw
                choices = frames - self.num_past
                context = context + (frame_noise[:, 1:2, 1] * choices).long().clamp(max=choices - 1)
            picked = torch.arange(frames, device=tokens.device)[None, :] >= context
        elif task == "joint" and self.joint_frames == "random":
            picked = frame_noise[..., 1] < 0.5
        else:
            picked = torch.ones(batch, frames, dtype=torch.bool, device=tokens.device)
        picked_tokens = picked[:, :, None, None].expand_as(tokens)
        # where each token falls in [0, 1) within its unit: its draw (bernoulli) or its rank / n (exact)
        position = noise if self.mask_count == "bernoulli" else self._rank_fraction(noise, picked_tokens, task)
        threshold = ratio[:, :, None, None]
        if self.mask_count == "exact":  # ceil(r n) of a unit's n tokens: rank < ceil(r n)
            count = self._unit_size(picked_tokens, task)
            threshold = torch.ceil(threshold * count - 1e-6) / count
        masked = (position < threshold) & picked_tokens
        corrupted = torch.where(masked, torch.full_like(tokens, self.mask_token_id), tokens)
        replaced = None
        if self.random_tokens > 0:
            if level_noise is None or random_fraction is None:
                raise ConfigError("objective.random_tokens > 0 needs level_noise and random_fraction draws")
            fraction = random_fraction * self.random_tokens
            if self.mask_count == "exact":  # floor(f m) of the m unmasked tokens, next in rank order
                count = self._unit_size(picked_tokens, task)
                kept = count - threshold * count
                upper = threshold + torch.floor(fraction * kept + 1e-6) / count
            else:
                upper = threshold + fraction * (1 - threshold)
            replaced = (position >= threshold) & (position < upper) & picked_tokens
            levels = (level_noise * self.mask_token_id).long().clamp_(max=self.mask_token_id - 1).to(tokens.dtype)
            corrupted = torch.where(replaced, levels, corrupted)
        scored = picked_tokens if self.loss_on == "task" else torch.ones_like(picked_tokens)
        return MaskedBatch(task, corrupted, self.temporal_mask(task), scored, masked, replaced)

    def _whole_sequence_unit(self, task: str) -> bool:
        return task == "future" or (task == "joint" and self.joint_frames == "all")

    def _unit_size(self, picked_tokens: Tensor, task: str) -> Tensor:
        """Tokens in each token's unit, broadcastable to ``(B, T, H, W)``."""
        batch, frames, height, width = picked_tokens.shape
        if self._whole_sequence_unit(task):
            return picked_tokens.reshape(batch, -1).sum(dim=1).clamp(min=1).to(torch.float32)[:, None, None, None]
        return torch.full((1, 1, 1, 1), float(height * width), device=picked_tokens.device)

    def _rank_fraction(self, noise: Tensor, picked_tokens: Tensor, task: str) -> Tensor:
        """Rank / n of each picked token's draw within its unit (0 = smallest); unpicked tokens get 1."""
        batch, frames = noise.shape[:2]
        rows = noise.reshape(batch, -1) if self._whole_sequence_unit(task) else noise.reshape(batch * frames, -1)
        picked = picked_tokens.reshape(rows.shape)
        keys = torch.where(picked, rows, torch.full_like(rows, 2.0))
        rank = keys.argsort(dim=1).argsort(dim=1).to(torch.float32)
        count = picked.sum(dim=1, keepdim=True).clamp(min=1).to(torch.float32)
        return torch.where(picked, rank / count, torch.ones_like(rank)).reshape(noise.shape)

    def loss(self, logits: Tensor, tokens: Tensor, batch: MaskedBatch) -> Tensor:
        """Mean cross-entropy of ``logits`` ``(B, T, H, W, C)`` over the scored tokens (``C`` >= the levels:
        a model may predict extra classes, e.g. copilot4D's tied head scores its mask row too)."""
        scored = batch.scored
        if not bool(scored.any()):
            return logits.sum() * 0.0  # nothing picked this batch (joint task, tiny batch): no signal
        return F.cross_entropy(logits[scored].float(), tokens[scored].long(), label_smoothing=self.label_smoothing)
