"""Optimisers, learning-rate schedules, EMA and the resumable data order used by the engine."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.utils.data import Sampler

from genflow.engine.train_config import TrainConfig

__all__ = ["build_optimizer", "build_lr_schedule", "ExponentialMovingAverage", "EpochBatchSampler"]


def build_optimizer(model: nn.Module, cfg: TrainConfig, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """Adam / AdamW over the model's trainable parameters, or over the recipe's parameter `groups`
    (dicts with "params" and optionally their own "lr" / "weight_decay")."""
    params = groups if groups is not None else [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, *,
                      steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up for `warmup_steps`, then constant, cosine or linear decay that reaches `min_lr` at
    optimiser step `total_steps` (the run's length, or train.lr_decay_epochs of steps) and holds it after.
    With `train.lr_interval=epoch` the decay reads the step at the start of its epoch (`steps_per_epoch`)."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    per_epoch = cfg.lr_interval == "epoch"

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        if per_epoch:
            step = step - step % max(1, steps_per_epoch)
        progress = min(1.0, max(0, step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ExponentialMovingAverage:
    """A frozen copy of the model whose weights follow `ema = decay * ema + (1 - decay) * weights`."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation, this process's share of each global batch.

    The order depends only on (seed, epoch), so resuming at `start_batch` replays exactly the batches
    an uninterrupted run would have seen, and N processes together see exactly the global batches of
    one process (process r takes rows [r*b, (r+1)*b) of each global batch of size N*b).
    """

    def __init__(self, num_samples: int, global_batch: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, num_batches: int | None = None, shuffle: bool = True):
        self.num_samples, self.global_batch = num_samples, global_batch
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.local_batch = global_batch // world_size
        self.num_batches = num_samples // global_batch if num_batches is None else num_batches
        self.start_batch, self.shuffle = start_batch, shuffle

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        for b in range(self.start_batch, self.num_batches):
            start = b * self.global_batch + self.rank * self.local_batch
            yield order[start : start + self.local_batch].tolist()
