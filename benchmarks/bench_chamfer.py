"""Chamfer-distance throughput: genflow's chunked ``chamfer_distance`` vs a naive whole-batch ``torch.cdist``.

Each (method, batch size) runs in a fresh subprocess so its peak memory (peak RSS above the RSS once
the inputs are built; Linux only) is measured on its own. Times are the best of ``--repeats`` calls after one
warm-up call, in the same run, on the same inputs, so the ratio column compares like with like.

Usage::

    python benchmarks/bench_chamfer.py                      # B in (32, 256, 1024), N = M = 500, D = 2
    python benchmarks/bench_chamfer.py --batch-sizes 64 --points 2048 --dim 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from genflow.engine.precision import cpu_description
from genflow.metrics.chamfer import chamfer_distance

METHODS = ("chunked", "naive_cdist")


def naive_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The obvious implementation: one (B, N, M) distance matrix for the whole batch."""
    distances = torch.cdist(x, y)
    return distances.amin(dim=2).mean(dim=1) + distances.amin(dim=1).mean(dim=1)


def _reset_peak_rss() -> None:
    """Make the kernel's peak-RSS counter start from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _rss_mib(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _inputs(batch_size: int, points: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, points, dim, generator=generator) * 2 - 1
    y = torch.rand(batch_size, points, dim, generator=generator) * 2 - 1
    return x, y


def run_worker(method: str, batch_size: int, points: int, dim: int, repeats: int) -> dict:
    """Time one method on one batch size; returns the measurements as a dict."""
    x, y = _inputs(batch_size, points, dim)
    _reset_peak_rss()
    baseline = _rss_mib("VmRSS")
    function = chamfer_distance if method == "chunked" else naive_chamfer
    with torch.no_grad():
        function(x, y)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(x, y)
            times.append(time.perf_counter() - start)
    best = min(times)
    return {
        "method": method,
        "batch_size": batch_size,
        "seconds": best,
        "pairs_per_s": batch_size / best,
        "peak_extra_mib": _rss_mib("VmHWM") - baseline,
    }


def check_agreement(points: int, dim: int) -> float:
    """Largest |difference| between the two methods on a small batch (sanity check, not timed)."""
    x, y = _inputs(32, points, dim)
    return (chamfer_distance(x, y) - naive_chamfer(x, y)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--points", type=int, default=500, help="N = M points per cloud")
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        method, batch_size = args.worker[0], int(args.worker[1])
        print(json.dumps(run_worker(method, batch_size, args.points, args.dim, args.repeats)))
        return

    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine
    print(
        f"Chamfer distance, N = M = {args.points}, D = {args.dim}, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; best of {args.repeats} after 1 warm-up"
    )
    print(f"max |chunked - naive| on 32 pairs: {check_agreement(args.points, args.dim):.2e}")
    header = (
        f"{'B':>6} {'method':>12} {'ms/call':>10} {'pairs/s':>10} {'vs naive':>9} {'peak MiB':>9} "
        f"{'cdist matrix MiB':>17}"
    )
    print(header)
    print("-" * len(header))
    for batch_size in args.batch_sizes:
        results = {}
        for method in METHODS:
            command = [
                sys.executable, __file__, "--worker", method, str(batch_size),
                "--points", str(args.points), "--dim", str(args.dim), "--repeats", str(args.repeats),
            ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[method] = json.loads(output.strip().splitlines()[-1])
        matrix_mib = batch_size * args.points**2 * 4 / 2**20
        for method in METHODS:
            result = results[method]
            ratio = result["pairs_per_s"] / results["naive_cdist"]["pairs_per_s"]
            print(
                f"{batch_size:>6} {method:>12} {1000 * result['seconds']:>10.1f} {result['pairs_per_s']:>10.0f} "
                f"{ratio:>8.2f}x {result['peak_extra_mib']:>9.0f} {matrix_mib:>17.0f}"
            )


if __name__ == "__main__":
    main()
