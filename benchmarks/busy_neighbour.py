"""Training throughput beside a busy neighbour: every recipe, quiet and with one competing busy process.

For each recipe, `genflow train RECIPE` runs `--steps` optimiser steps of its default config four ways,
interleaved: quiet and beside one busy process (a Python `while True: pass`, unpinned, like
`yes > /dev/null`), each with the engine's automatic thread count (`train.threads: null`, the default)
and with one thread per core fixed (`train.threads=<cores>`, what the engine did before it followed the
free cores). Throughput is the median `samples_per_s` of the training windows after the first two
(`metrics.jsonl`), so start-up and the first decision are left out; evaluation is not in it.

Usage::

    python benchmarks/busy_neighbour.py [--recipes digit4 hand-vae ...] [--steps 80] [--datasets datasets]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from genflow.engine.precision import cpu_description

# the dataset each recipe's default config reads, under --datasets (made by `genflow data make ...`)
DATA = {"digit4": ("data.path", "digit4"), "namo-fm": ("data.data_dir", "namo"), "namo-diffusion": ("data.data_dir", "namo"),
        "mmnist-wm": ("data.data_dir", "mmnist"), "dtm": ("data.data_dir", "mnist-images"), "hand-vae": ("data.data_dir", "hands"),
        "dtm-lunar": None}  # dtm-lunar streams LunarLander frames (the gym extra): no dataset


def throughput(recipe: str, *, steps: int, data: list[str], threads: int | None, busy: bool, root: Path) -> float:
    """Median samples/s of one run's training windows after the first two."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        run = root / f"{recipe}-{'busy' if busy else 'quiet'}-{threads or 'auto'}"
        subprocess.run([sys.executable, "-m", "genflow.cli", "train", recipe, *data, f"train.max_steps={steps}",
                        "train.log_every=5", "train.eval_every=1000", "train.epochs=1000", "train.log_with=none",
                        *([f"train.threads={threads}"] if threads else []), "--runs-dir", str(root), "--name", run.name,
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
        records = [json.loads(line) for line in (root / recipe / run.name / "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in records if r["kind"] == "train" and "samples_per_s" in r][2:]
        return statistics.median(rates)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["digit4", "hand-vae", "namo-fm", "mmnist-wm", "dtm"])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--datasets", type=Path, default=Path("datasets"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_description()}; usable cores {cores}; torch {torch.__version__}")
    print(f"{'recipe':15s} {'quiet auto':>10s} {'quiet fixed':>11s} {'busy auto':>10s} {'busy fixed':>10s} "
          f"{'busy auto / quiet':>17s} {'busy fixed / quiet':>18s}")
    for recipe in args.recipes:
        data = [f"{DATA[recipe][0]}={(args.datasets / DATA[recipe][1]).resolve()}"] if DATA[recipe] else []
        root = Path(tempfile.mkdtemp(prefix="busy-neighbour-"))
        try:
            rates = {(busy, threads): throughput(recipe, steps=args.steps, data=data, threads=threads, busy=busy, root=root)
                     for busy in (False, True) for threads in (None, cores)}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        quiet = rates[(False, None)]
        print(f"{recipe:15s} {quiet:10.1f} {rates[(False, cores)]:11.1f} {rates[(True, None)]:10.1f} "
              f"{rates[(True, cores)]:10.1f} {rates[(True, None)] / quiet:17.2f} {rates[(True, cores)] / quiet:18.2f}")


if __name__ == "__main__":
    main()
