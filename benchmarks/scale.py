"""Training from a shard set far larger than memory: resident memory stays flat, map-style and streamed.

    python benchmarks/scale.py [--samples 10000000] [--steps 400] [--out /tmp/genflow-scale]

Writes a synthetic hand-pose shard set (`--samples` poses of 90 float32 + 2 int64 family labels,
uniform within ±1 rad; written once, then reused) and trains the hand-vae recipe on it twice, reading
batches from the shards (`data.in_memory=false`, map-style `ShardDataset`) and as a stream
(`data.streaming=true`), `--steps` optimiser steps of 8192 each. The training process's resident
memory (VmRSS) is sampled every 0.5 s; the figures are its median in each quarter of the run (the
first quarter includes the start-up) and its peak.
Not a test: it writes gigabytes and runs for minutes. Prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from genflow.data.shards import ShardWriter, dataset_info
from genflow.engine.precision import cpu_description


def write_poses(out: Path, samples: int, seed: int = 0) -> float:
    """The synthetic set, in chunks of 10^6 (the writer streams them into 256 MiB shards); seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    held_out = 20_000
    fields = {"pose": ((90,), "float32"), "family": ((2,), "int64")}
    with ShardWriter(out, fields, seed=seed, source={"generator": "benchmarks/scale.py (uniform synthetic poses)"}) as writer:
        for split, count in (("val", held_out), ("test", held_out), ("train", samples)):
            for lo in range(0, count, 10**6):
                n = min(10**6, count - lo)
                writer.write(split, pose=rng.uniform(-1, 1, (n, 90)).astype(np.float32),
                             family=rng.integers(0, 6, (n, 2)).astype(np.int64))
    return time.perf_counter() - start


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def train(data: Path, runs: Path, name: str, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "genflow.cli", "train", "hand-vae", "--runs-dir", str(runs), "--name", name, "--no-progress",
           f"data.data_dir={data}", f"train.max_steps={steps}", "train.eval_every=1000", "train.checkpoint_every_steps=100",
           "data.val_limit=2000", "eval.poses=2000", "eval.prior_samples=2000", "eval.figure_poses=500", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        value = rss_mib(proc.pid)
        if value is not None:
            samples.append(value)
        time.sleep(0.5)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{err[-2000:]}")
    quarters = [float(np.median(part)) for part in np.array_split(np.asarray(samples), 4)]
    return {"seconds": time.perf_counter() - start, "quarters": quarters, "peak": max(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10**7)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("/tmp/genflow-scale"))
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    data = args.out / f"poses-{args.samples}"
    if not (data / "manifest.json").exists():
        print(f"writing {args.samples} poses: {write_poses(data, args.samples):.0f} s")
    info = dataset_info(data)
    print(f"{data}: {info['splits']['train']['count']} training poses, {info['total_bytes'] / 2**30:.2f} GiB in "
          f"{info['splits']['train']['shards']} shards; {args.steps} steps of 8192 = {args.steps * 8192:,} samples per run")
    print(f"{'reader':34s} {'seconds':>8s}  median RSS in each quarter of the run    peak  (MiB)")
    subprocess.run(["rm", "-rf", str(args.out / "runs")], check=True)
    for name, extra in (("map-style ShardDataset (lazy)", ["data.in_memory=false"]), ("StreamingShardDataset", ["data.streaming=true"])):
        r = train(data, args.out / "runs", name.split()[0].lower(), args.steps, extra)
        print(f"{name:34s} {r['seconds']:8.0f}  {'  '.join(f'{q:6.0f}' for q in r['quarters'])}          {r['peak']:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
