"""dtm-lunar streaming: frame-source throughput, and memory of a training run over time.

1. Frame source alone: LunarLander-v3 frames (render + 32 x 32 area downsample) per second, in this
   process, for `--source-seconds`.
2. A short `genflow train dtm-lunar` run (default config + `--overrides`) as a subprocess; every
   `--every` seconds the resident memory (RSS) of the trainer and its DataLoader workers is sampled
   from /proc. Flat memory = the stream holds O(batch), not the frames seen so far.
3. From the run's metrics.jsonl: training samples/s and the fraction of time the trainer waited for
   the next batch (data_wait_fraction; ~0 means rendering stayed off the critical path).

    python benchmarks/lunar_stream.py [--runs-dir /tmp/lunar-bench] [--overrides train.epochs=3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from genflow.engine.precision import cpu_description


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total / 1024


def source_rate(seconds: float) -> float:
    from genflow_recipes.dtm.lunar import LunarLanderFrames

    frames = iter(LunarLanderFrames(resolution=32, seed=0))
    next(frames)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(frames)
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", default="/tmp/lunar-bench")
    p.add_argument("--name", default="stream")
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--source-seconds", type=float, default=10.0)
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

    print(f"frame source alone: {source_rate(args.source_seconds):.0f} frames/s (render + downsample, one process)", flush=True)
    cmd = [sys.executable, "-m", "genflow.cli", "train", "dtm-lunar", "--name", args.name, "--runs-dir", args.runs_dir,
           "--no-progress", *args.overrides]
    run_dir = Path(args.runs_dir) / "dtm-lunar" / args.name
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        time.sleep(args.every)
        if proc.poll() is None:
            samples.append((time.perf_counter() - start, tree_rss_mb(proc.pid)))
            print(f"t={samples[-1][0]:6.0f} s  RSS (trainer + workers) {samples[-1][1]:7.0f} MiB", flush=True)
    if proc.returncode != 0:
        print(proc.stderr.read(), file=sys.stderr)
        raise SystemExit(proc.returncode)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    steps = train[-1]["step"]
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s (incl. start-up and evaluations)")
    later = train[len(train) // 4:] or train  # after compilation
    print(f"training samples/s {sum(r['samples_per_s'] for r in later) / len(later):.1f}, "
          f"data_wait_fraction {sum(r['data_wait_fraction'] for r in later) / len(later):.4f} (mean over the last 3/4 of log lines)")
    if len(samples) >= 3:
        third = len(samples) // 3
        first, last = samples[third][1], samples[-1][1]
        print(f"RSS after 1/3 of the run {first:.0f} MiB, at the end {last:.0f} MiB ({last - first:+.0f} MiB)")


if __name__ == "__main__":
    main()
