"""What `genflow sweep` costs per trial beyond plain `genflow train`.

The same N trainings (one value of train.lr each, tiny digit4 runs) are run twice in one invocation:
as N plain `genflow train` processes one after another, and as one `genflow sweep` of N trials with
`--parallel 1` (its own start-up, config checks, bookkeeping and summary included). The two are
interleaved (plain, sweep, plain, sweep ...) `--repeats` times so a busy neighbour hurts both alike;
the per-trial overhead is (sweep - plain) / N, from the medians.

Usage::

    python benchmarks/sweep_overhead.py --data datasets/digit4-tiny      # make it: genflow data make digit4 \\
                                                                         #   out=datasets/digit4-tiny limit=400 points=128
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from genflow.engine.precision import cpu_description

TINY = ["model.latent_dim=16", "model.encoder_hidden=[16,32]", "model.field_hidden=32", "model.field_depth=2",
        "model.time_dim=16", "train.batch_size=8", "train.epochs=1", "eval.num_clouds=8", "eval.steps=4",
        "train.precision=no", "train.log_with=none"]


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a digit4 dataset (a small one: the trainings are tiny)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lrs = [f"{1e-3 * (i + 1):g}" for i in range(args.trials)]
    genflow = [sys.executable, "-m", "genflow.cli"]
    common = [f"data.path={args.data.resolve()}", *TINY]
    print(f"CPU: {cpu_description()}; usable cores {len(os.sched_getaffinity(0))}; torch {torch.__version__}")
    plain_times, sweep_times = [], []
    for repeat in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
        try:
            plain_times.append(sum(_timed([*genflow, "train", "digit4", f"train.lr={lr}", *common, "--name", f"p{i}",
                                           "--runs-dir", str(root / "plain"), "--no-progress"]) for i, lr in enumerate(lrs)))
            sweep_times.append(_timed([*genflow, "sweep", "digit4", f"train.lr=choice({','.join(lrs)})", *common,
                                       "--name", "s", "--runs-dir", str(root / "sweep")]))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"repeat {repeat + 1}: {args.trials} plain trainings {plain_times[-1]:.1f} s, one sweep of them {sweep_times[-1]:.1f} s")
    plain, sweep = statistics.median(plain_times), statistics.median(sweep_times)
    print(f"median: plain {plain:.1f} s, sweep {sweep:.1f} s, ratio {sweep / plain:.3f}; "
          f"overhead per trial {(sweep - plain) / args.trials:+.2f} s")


if __name__ == "__main__":
    main()
