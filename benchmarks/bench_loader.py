"""Loader throughput: genflow shards vs a directory of per-sample .npz files vs in-memory tensors.

Builds one synthetic dataset (``points`` (500, 2) float32 + ``label`` int64) in each format in a
temporary directory and times one shuffled epoch through ``torch.utils.data.DataLoader`` with the
same batch size and workers. The per-sample npz directory is the format the source training code
used, so ratios are against it, measured in the same run.

Files are freshly written, so they sit in the page cache: this measures loader overhead, not disk.

    python benchmarks/bench_loader.py [--samples 20000] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from genflow.data.shards import ShardDataset, ShardWriter, StreamingShardDataset
from genflow.engine.optim import EpochBatchSampler
from genflow.engine.precision import cpu_description
from genflow.engine.loader import as_tensors, training_loader

__all__ = ["NpzDirDataset", "main"]


class NpzDirDataset(Dataset):
    """One ``sample-XXXXXXX.npz`` per sample, as in the source systems."""

    def __init__(self, directory: Path, count: int) -> None:
        self.files = [directory / f"sample-{i:07d}.npz" for i in range(count)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        with np.load(self.files[i]) as sample:
            return {"points": torch.from_numpy(sample["points"]), "label": torch.from_numpy(sample["label"])}


def make_data(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(samples, 500, 2)).astype(np.float32)
    labels = rng.integers(0, 10, size=samples).astype(np.int64)
    return points, labels


def time_epoch(dataset: Dataset, batch_size: int, workers: int, shuffle: bool) -> tuple[float, int]:
    """Seconds for one epoch (worker start-up included) and the number of samples seen."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        generator=torch.Generator().manual_seed(0) if shuffle else None,
    )
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        points = batch["points"] if isinstance(batch, dict) else batch[0]
        seen += points.shape[0]
    return time.perf_counter() - start, seen


class PerSample(Dataset):
    """The same dataset without `get_batch`: the DataLoader fetches its samples and restacks them (the
    engine's loader before it read whole batches)."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return self.dataset.__getitems__(indices)


def time_engine_epoch(dataset: Dataset, batch_size: int, workers: int) -> float:
    """Samples / s of one epoch through the engine's loader (`training_loader`), worker start-up included."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0, epoch=0)
    start = time.perf_counter()
    seen = sum(len(as_tensors(batch)["points"]) for batch in training_loader(dataset, sampler, num_workers=workers,
                                                                             local_batch=batch_size, seed=0, epoch=0))
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine

    points, labels = make_data(args.samples)
    with tempfile.TemporaryDirectory(prefix="genflow-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        npz_dir = tmp / "npz"
        npz_dir.mkdir()
        for i in range(args.samples):
            np.savez(npz_dir / f"sample-{i:07d}.npz", points=points[i], label=labels[i])
        npz_write = time.perf_counter() - start

        start = time.perf_counter()
        fields = {"points": ((500, 2), "float32"), "label": ((), "int64")}
        with ShardWriter(tmp / "shards", fields, max_shard_bytes=32 * 2**20) as writer:
            writer.write("train", points=points, label=labels)
        manifest = writer.close()
        shard_write = time.perf_counter() - start
        num_shards = len(manifest["splits"]["train"]["shards"])

        candidates = [
            ("npz directory (baseline)", lambda: NpzDirDataset(npz_dir, args.samples), True),
            ("ShardDataset", lambda: ShardDataset(tmp / "shards", "train"), True),
            ("ShardDataset(in_memory=True)", lambda: ShardDataset(tmp / "shards", "train", in_memory=True), True),
            ("StreamingShardDataset", lambda: StreamingShardDataset(tmp / "shards", "train", seed=0), False),
            ("TensorDataset (in memory)", lambda: TensorDataset(*map(torch.from_numpy, (points, labels))), True),
        ]
        print(
            f"{args.samples} samples of points (500, 2) float32 + label; batch {args.batch_size}, "
            f"{args.workers} workers, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(f"write: npz dir {npz_write:.1f} s, shards {shard_write:.1f} s ({num_shards} shards)")
        print(f"{'format':32s} {'epoch s':>8s} {'samples/s':>10s} {'vs npz':>7s}")
        baseline = None
        for name, build, shuffle in candidates:
            seconds, seen = time_epoch(build(), args.batch_size, args.workers, shuffle)
            assert seen == args.samples, f"{name} yielded {seen} samples, expected {args.samples}"
            rate = seen / seconds
            baseline = baseline or rate
            print(f"{name:32s} {seconds:8.2f} {rate:10.0f} {rate / baseline:6.1f}x")

        print(f"\nthe engine's loader (training_loader), samples/s; workers {args.workers} vs 0, measured in turn:")
        print(f"{'dataset':44s} {'0 workers':>10s} {f'{args.workers} workers':>10s} {'ratio':>6s}")
        engine_cases = [
            ("ShardDataset, whole batches", lambda: ShardDataset(tmp / "shards", "train")),
            ("ShardDataset, per sample + restack (before)", lambda: PerSample(ShardDataset(tmp / "shards", "train"))),
            ("ShardDataset(in_memory=True), whole batches", lambda: ShardDataset(tmp / "shards", "train", in_memory=True)),
        ]
        for name, build in engine_cases:
            alone, workers = (time_engine_epoch(build(), args.batch_size, w) for w in (0, args.workers))
            print(f"{name:44s} {alone:10.0f} {workers:10.0f} {workers / alone:5.2f}x")


if __name__ == "__main__":
    main()
