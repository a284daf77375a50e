"""How the engine reads training data: the DataLoader of an epoch and the run's length in steps.

The trainer asks a dataset for one of three things, named here as protocols: a map-style dataset that
reads whole batches (`BatchDataset`, as ShardDataset does), streamed shards with a length and a
resumable position (`StreamedShards`, as StreamingShardDataset), or any iterable of samples (a
simulator: no length, no replay; an epoch is `train.batches_per_epoch` batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from genflow.engine.optim import EpochBatchSampler
from genflow.engine.train_config import TrainConfig
from genflow.errors import ConfigError

__all__ = ["BatchDataset", "StreamedShards", "StepPlan", "plan_steps", "training_loader", "as_tensors", "WholeBatches"]


@runtime_checkable
class BatchDataset(Protocol):
    """A map-style dataset that reads a whole batch at once (one sorted read per shard): a DataLoader
    worker then hands over one array per field instead of a list of samples."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: list[int]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class StreamedShards(Protocol):
    """A stream with a known length and an exact resume position: a new shuffle each epoch (`set_epoch`),
    and the batches already seen skipped on resume (`set_position`, per process and worker)."""

    def batches_per_epoch(self, local_batch: int, num_workers: int) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def set_position(self, batches_done: int, local_batch: int) -> None: ...


class WholeBatches(Dataset):
    """A dataset that reads whole batches (`get_batch(indices)`, as ShardDataset does: one sorted read per
    shard), seen by a DataLoader as a dataset of batches: item `indices` is the collated batch. A worker
    then hands over one array per field instead of a list of samples that the main process restacks.

    `as_numpy`: the batch crosses from a worker as NumPy arrays, pickled through the worker's pipe, which
    measured 2.6x faster here than torch's shared-memory hand-over of a 128 KB batch (benchmarks/bench_loader.py);
    the engine turns them into tensors (`as_tensors`)."""

    def __init__(self, dataset: Dataset, as_numpy: bool = False):
        self.dataset, self.as_numpy = dataset, as_numpy

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor | np.ndarray]:
        batch = self.dataset.get_batch(indices)
        return {k: v.numpy() for k, v in batch.items()} if self.as_numpy else batch


def _as_is(batch):
    return batch


def as_tensors(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A loader's batch with NumPy arrays (a WholeBatches worker's) as tensors, without a copy."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def training_loader(dataset: Dataset, sampler: EpochBatchSampler | None, *, num_workers: int, local_batch: int,
                    seed: int, epoch: int, pin: bool = False) -> DataLoader:
    """The DataLoader of one training epoch: `sampler`'s batches of a map-style dataset (whole batches
    when it can read them), or `local_batch`-sized batches of a stream."""
    # Its own generator, seeded by (seed, epoch): a DataLoader draws its workers' base seed from it, not from
    # the global torch RNG (which a resumed run would otherwise find one draw further on).
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 10**8 + epoch)
    if isinstance(dataset, IterableDataset):  # a stream: workers produce batches in the background
        return DataLoader(dataset, batch_size=local_batch, num_workers=num_workers, pin_memory=pin, drop_last=True,
                          prefetch_factor=4 if num_workers else None, generator=generator)
    if isinstance(dataset, BatchDataset):  # batch_size=None: the sampler's index lists go to WholeBatches as they are
        numpy = num_workers > 0 and not pin  # (pinned memory needs tensors in the workers)
        return DataLoader(WholeBatches(dataset, as_numpy=numpy), sampler=sampler, batch_size=None, num_workers=num_workers,
                          pin_memory=pin, generator=generator, collate_fn=_as_is if numpy else None)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin, generator=generator)


@dataclass(frozen=True)
class StepPlan:
    """How many batches make an epoch and how many optimiser steps make the run."""

    batches_per_epoch: int  # a multiple of grad_accum_steps (each process takes its share of every batch)
    steps_per_epoch: int
    total_steps: int  # all epochs, capped by train.max_steps
    streaming: bool  # the training set is an IterableDataset: streamed shards (a length, a resumable position) or any
    # iterator (no length: train.batches_per_epoch; no replay)


def plan_steps(cfg: TrainConfig, train_data: Dataset, world_size: int = 1) -> StepPlan:
    """The run's length from the training set and `train.*` (epochs, batch, accumulation, caps)."""
    streaming = isinstance(train_data, IterableDataset)
    if streaming and isinstance(train_data, StreamedShards):  # streamed shards: a known length per process x worker
        batches_per_epoch = train_data.batches_per_epoch(cfg.batch_size // world_size, cfg.num_workers)
        if cfg.batches_per_epoch is not None:
            batches_per_epoch = min(batches_per_epoch, cfg.batches_per_epoch)
        batches_per_epoch = batches_per_epoch // cfg.grad_accum_steps * cfg.grad_accum_steps
    elif streaming:  # an iterator of samples (simulator, generator): no length, no replay
        if cfg.batches_per_epoch is None:
            raise ConfigError("config key 'train.batches_per_epoch': a streamed training set has no length; "
                              "set how many batches make an epoch")
        batches_per_epoch = cfg.batches_per_epoch // cfg.grad_accum_steps * cfg.grad_accum_steps
    else:
        batches_per_epoch = len(train_data) // cfg.batch_size // cfg.grad_accum_steps * cfg.grad_accum_steps
        if cfg.batches_per_epoch is not None:
            batches_per_epoch = min(batches_per_epoch, cfg.batches_per_epoch // cfg.grad_accum_steps * cfg.grad_accum_steps)
    if batches_per_epoch == 0:
        size = "the stream" if streaming else f"the training set has {len(train_data)} samples,"
        raise ConfigError(f"{size} fewer than one step of "
                          f"train.batch_size={cfg.batch_size} x grad_accum_steps={cfg.grad_accum_steps}")
    steps_per_epoch = batches_per_epoch // cfg.grad_accum_steps
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return StepPlan(batches_per_epoch, steps_per_epoch, total_steps, streaming)
