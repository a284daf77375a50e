"""How cost grows with work: digit4 training-step time vs batch and vs points per cloud, Chamfer vs clouds.

    python benchmarks/scaling.py [--repeats 5] [--precision fp32|bf16]

The digit4 recipe's default model (PointNet encoder + adaLN velocity field), one plain training step
(loss, backward, clipping, Adam: `mfu.plain_step`) on uniform synthetic clouds: batch 8 ... 512 at 500 points, then 250 ... 2000
points at batch 32; and `genflow.metrics.chamfer_distance` of N pairs of 500-point clouds. Each time is
the median of `--repeats` after a warm-up, with freed memory kept in the process as the engine does
(`--glibc-default`: as glibc's malloc does by default, which returns big blocks and re-faults them). A least-squares line t = a + b x is fitted to each series,
with R^2 and the ratio of the last point's time to the line's (above 1: super-linear there).
Prints the CPU it ran on. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from genflow.engine.memory import keep_freed_memory
from genflow.engine.precision import cpu_description
from genflow.metrics import chamfer_distance
from genflow_recipes.digit4.recipe import Digit4Config, Digit4Recipe
from mfu import plain_step  # the same plain training step as the MFU benchmark (benchmarks/ is the script's directory)


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit(xs: list[float], ts: list[float]) -> str:
    b, a = np.polyfit(xs, ts, 1)
    predicted = a + b * np.asarray(xs)
    r2 = 1 - np.sum((np.asarray(ts) - predicted) ** 2) / np.sum((np.asarray(ts) - np.mean(ts)) ** 2)
    return f"t = {a * 1e3:.2f} ms + {b * 1e6:.1f} us * x; R^2 {r2:.4f}; last point / line {ts[-1] / predicted[-1]:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave malloc as it is (the engine keeps freed memory: genflow/engine/memory.py)")
    args = parser.parse_args()
    kept = False if args.glibc_default else keep_freed_memory()
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; precision {args.precision}; "
          f"freed memory kept in the process: {kept}")
    recipe = Digit4Recipe(Digit4Config())
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(batch: int, points: int):
        clouds = {"points": torch.rand(batch, points, 2) * 2 - 1}
        return lambda: plain_step(recipe, model, optimizer, dtype, clouds, 0)

    series = {
        "digit4 step vs batch (500 points)": ([8, 16, 32, 64, 128, 256, 512], lambda x: step(x, 500)),
        "digit4 step vs points (batch 32)": ([250, 500, 1000, 2000], lambda x: step(32, x)),
        "Chamfer vs clouds (500 points)": ([32, 64, 128, 256, 512], lambda x: (lambda a=torch.rand(x, 500, 2), b=torch.rand(x, 500, 2):
                                                                          chamfer_distance(a, b))),
    }
    for title, (xs, make) in series.items():
        ts = [median_seconds(make(x), args.repeats) for x in xs]
        print(f"\n{title}")
        print("  x      " + "  ".join(f"{x:>8d}" for x in xs))
        print("  ms     " + "  ".join(f"{t * 1e3:8.1f}" for t in ts))
        print("  us / x " + "  ".join(f"{t / x * 1e6:8.1f}" for x, t in zip(xs, ts)))
        print("  " + fit(xs, ts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
