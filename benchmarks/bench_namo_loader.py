"""NAMO loader throughput: per-scene .npz files (the source system's loader) vs genflow HDF5 shards.

Every method yields the same training batches, ``context`` (B, 5, 64, 64) and ``target_goal``
(B, 1, 64, 64) uint8, of the same scenes: the shards' train split, mapped back to its npz files
through ``files.txt`` and ``file_index``. The baseline opens a scene's ``.npz`` in ``__getitem__`` and
converts it with :func:`~genflow_recipes.namo.importer.read_namo_npz` (binarise, area-resize 224 -> 64 px),
the work the importer does once. All go through ``torch.utils.data.DataLoader`` with the same batch
size, workers and shuffled sampler; ratios are against the npz directory at the same number of
workers, measured in the same run.

Columns: ``setup s`` builds the dataset (``in_memory=True`` reads the split here), ``first s`` is the
first batch (worker start-up included), ``samples/s`` is over the ``--batches`` batches after it.
Files are read through the page cache; the npz files are read first, so a cold cache slows the
baseline: run twice to compare warm numbers.

    python benchmarks/bench_namo_loader.py [--npz-dir datasets/namo-npz] [--shards datasets/namo] \\
        [--batches 40] [--batch-size 64] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from genflow.engine.precision import cpu_description
from genflow.data.npz_import import FILE_LIST_NAME
from genflow_recipes.namo.importer import read_namo_npz
from genflow.data.shards import ShardDataset, load_split

__all__ = ["NpzSceneDataset", "main"]

FIELDS = ["context", "target_goal"]
MAKE_COMMANDS = (
    "genflow data make-namo --scenes 4000 --out datasets/namo-npz --workers 2",
    "genflow data import namo datasets/namo-npz out=datasets/namo",
)


class NpzSceneDataset(Dataset):
    """One ``.npz`` per scene, read and resized to ``image_size`` when indexed, as in the source system."""

    def __init__(self, files: list[Path], image_size: int = 64) -> None:
        self.files = files
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fields = read_namo_npz(self.files[i], self.image_size)
        return {name: torch.from_numpy(fields[name]) for name in FIELDS}


def train_files(npz_dir: Path, shards: Path) -> list[Path]:
    """The npz file of each train sample of the shards, in shard order."""
    names = (shards / FILE_LIST_NAME).read_text().splitlines()
    indices = load_split(shards, "train", ["file_index"])["file_index"]
    return [npz_dir / names[int(i)] for i in indices]


def time_batches(dataset: Dataset, batches: int, batch_size: int, workers: int) -> tuple[float, float]:
    """Seconds for the first batch and samples/s over the `batches` batches after it (shuffled)."""
    sampler = RandomSampler(dataset, num_samples=(batches + 1) * batch_size, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += batch["context"].shape[0]
    assert seen == batches * batch_size, f"saw {seen} samples, expected {batches * batch_size}"
    return first, seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz-dir", type=Path, default=Path("datasets/namo-npz"))
    parser.add_argument("--shards", type=Path, default=Path("datasets/namo"))
    parser.add_argument("--batches", type=int, default=40, help="Timed batches (after a first, untimed one).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine

    if not args.npz_dir.is_dir() or not (args.shards / "manifest.json").is_file():
        print(f"need {args.npz_dir} (scene .npz files) and {args.shards} (their shards); make them with:",
              *MAKE_COMMANDS, sep="\n  ", file=sys.stderr)
        sys.exit(2)

    files = train_files(args.npz_dir, args.shards)
    missing = [f for f in files if not f.is_file()]
    if missing:
        print(f"{len(missing)} npz files of {args.shards} are missing from {args.npz_dir} (e.g. {missing[0]}); "
              "re-import the shards from this directory", file=sys.stderr)
        sys.exit(2)
    image_size = ShardDataset(args.shards, "train", FIELDS).field_shape("context")[-1]
    methods: list[tuple[str, Callable[[], Dataset]]] = [
        ("npz directory (baseline)", lambda: NpzSceneDataset(files, image_size)),
        ("ShardDataset", lambda: ShardDataset(args.shards, "train", FIELDS)),
        ("ShardDataset(in_memory=True)", lambda: ShardDataset(args.shards, "train", FIELDS, in_memory=True)),
    ]

    # Same content: the baseline's scene i is the shards' sample i.
    npz_item, shard_item = methods[0][1]()[0], methods[1][1]()[0]
    assert all(torch.equal(npz_item[name], shard_item[name]) for name in FIELDS), "npz and shard samples differ"

    print(f"{len(files)} train scenes, {image_size} px; {args.batches} batches of {args.batch_size}, shuffled; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'method':30s} {'workers':>7s} {'setup s':>8s} {'first s':>8s} {'samples/s':>10s} {'vs npz':>7s}")
    for workers in args.workers:
        baseline = None
        for name, build in methods:
            start = time.perf_counter()
            dataset = build()
            setup = time.perf_counter() - start
            first, rate = time_batches(dataset, args.batches, args.batch_size, workers)
            baseline = baseline or rate
            print(f"{name:30s} {workers:7d} {setup:8.2f} {first:8.2f} {rate:10.0f} {rate / baseline:6.1f}x")


if __name__ == "__main__":
    main()
