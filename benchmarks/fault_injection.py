"""Kill -9 a training at random moments, resume it each time, and compare with an uninterrupted run bit for bit.

    python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--steps 120] [--out /tmp/genflow-faults]

A small hand-vae (procedural poses made by `genflow data make hands`; a checkpoint every 4 steps) is
trained once straight through, then again while being SIGKILLed at a uniformly random moment of each
attempt (the process start included, so some kills land in imports, in the data set-up or inside a
checkpoint write), each attempt continuing with `--resume` from whatever the last one left. After the
kills the run finishes; every tensor of its last checkpoint (model, optimiser, scheduler, RNG) must
equal the uninterrupted run's exactly. Not a test: it runs for minutes. Prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

GENFLOW = [sys.executable, "-m", "genflow.cli"]
TINY = ["model.hidden=32", "model.z_dim=8", "train.batch_size=64", "train.checkpoint_every_steps=4", "train.log_every=4",
        "train.eval_every=100", "eval.poses=200", "eval.prior_samples=200", "eval.figure_poses=100", "data.val_limit=200",
        "--no-progress"]


def cpu_line() -> str:
    from genflow.engine.precision import cpu_description

    return str(cpu_description())


def tensors(value, prefix=""):
    """Every tensor (and plain value) of a nested checkpoint, by path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from tensors(item, f"{prefix}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from tensors(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def differences(a: dict, b: dict) -> list[str]:
    left, right = dict(tensors(a)), dict(tensors(b))
    out = [f"{key}: only in one" for key in set(left) ^ set(right)]
    for key in sorted(set(left) & set(right)):
        x, y = left[key], right[key]
        same = torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
        if not same:
            out.append(key)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1200, help="optimiser steps of each run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/genflow-faults"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data, runs = args.out / "hands", args.out / "runs"
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not (data / "manifest.json").exists():
        subprocess.run([*GENFLOW, "data", "make", "hands", f"out={data}", "n=4000", "overwrite=true"], check=True,
                       stdout=subprocess.DEVNULL)
    common = ["train", "hand-vae", "--runs-dir", str(runs), f"data.data_dir={data}", f"train.max_steps={args.steps}", *TINY]
    subprocess.run(["rm", "-rf", str(runs)], check=True)

    start = time.perf_counter()
    subprocess.run([*GENFLOW, *common, "--name", "straight"], check=True, stdout=subprocess.DEVNULL)
    straight_s = time.perf_counter() - start
    print(f"uninterrupted run: {straight_s:.1f} s for {args.steps} steps")

    run_dir = runs / "hand-vae" / "killed"
    last = run_dir / "checkpoints" / "last.pt"
    landed, positions, attempts = 0, [], 0
    while landed < args.kills and attempts < 3 * args.kills:  # kills of an unfinished run; a finished one starts over
        attempts += 1
        resume = ["--resume", str(run_dir)] if last.exists() else ["--name", "killed"]
        proc = subprocess.Popen([*GENFLOW, *common, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        delay = rng.uniform(0.5, straight_s / 2)  # anywhere in an attempt's first half, start-up included
        try:
            proc.wait(timeout=delay)
            print(f"attempt {attempts}: finished before its kill at {delay:.1f} s")
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            landed += 1
        step = torch.load(last, weights_only=True)["progress"]["step"] if last.exists() else None
        positions.append(step)
        print(f"attempt {attempts}: SIGKILL after {delay:.1f} s; last.pt at step {step}")
    finish = ["--resume", str(run_dir)] if last.exists() else ["--name", "killed"]
    subprocess.run([*GENFLOW, *common, *finish], check=True, stdout=subprocess.DEVNULL)

    reference = torch.load(runs / "hand-vae" / "straight" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    reference.pop("genflow_version"), resumed.pop("genflow_version")
    diff = differences(reference, resumed)
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").glob(".*.tmp"))
    print(f"{landed} kills of an unfinished run (last.pt after each: {positions})")
    print(f"final step {resumed['progress']['step']} vs {reference['progress']['step']}; "
          f"tensors that differ from the uninterrupted run: {len(diff)} {diff[:5]}; stale temp files: {leftovers}")
    ok = not diff and not leftovers and resumed["progress"]["step"] == args.steps and landed == args.kills
    print("BIT-EXACT" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
