"""train.compile on CPU: every recipe's default config trained eager and compiled, end to end, one thread.

    python benchmarks/compile_speed.py [--steps 300] [--repeats 3] [--recipes digit4,hand-vae]

Data: the small sets benchmarks/gpu_check.py builds (synthetic digits, generated scenes and poses; no
download). Each run is a fresh process (a cold compile: nothing cached in memory or on disk) training
`--steps` optimiser steps of the recipe's default config with train.threads=1, evaluation skipped; it is
timed from set-up to the last step, compile included. Eager and compiled runs alternate (eager, compiled,
eager, ...) so that load from other processes on a shared machine falls on both alike; the table gives
medians and the machine's load average while it ran. A recipe's default config turns compile on only
where compiled is >= 10 % faster end to end (docs/engine.md, "Speed").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import compile_seconds, recipe_runs, train_once  # noqa: E402

__all__ = ["main"]


def _child(recipe: str, data: str, steps: int, compile: bool, runs_root: str) -> None:
    """One timed run in this (fresh) process; its result as one JSON line on stdout."""
    run = next(r for r in recipe_runs(hardware="cpu") if r.recipe == recipe)
    try:
        stats = train_once(run, json.loads(data), steps=steps, compile=compile, runs_root=Path(runs_root),
                           log_every=max(steps // 10, 1), threads=1)
    except Exception as exc:  # noqa: BLE001 - a failed or diverged run is a row of the table, not the end of it
        stats = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
    print("RESULT " + json.dumps(stats))


def _timed_run(recipe: str, overrides: list[str], *, steps: int, compile: bool, scratch: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(dir=scratch) as cache:  # a cold compile: no inductor cache from earlier runs
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache}
        try:
            out = subprocess.run([sys.executable, __file__, "--child", recipe, json.dumps(overrides), str(steps), str(int(compile)),
                                  str(scratch / "runs")], env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {timeout:.0f} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="eager/compiled pairs per recipe (medians reported)")
    parser.add_argument("--recipes", default=None, help="comma-separated recipe names (default: all)")
    parser.add_argument("--precision", default=None, help="train.precision for every run (default: each config's)")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds after which a run counts as not finished")
    args = parser.parse_args(argv)

    import torch

    from genflow.engine.precision import cpu_description

    wanted = set(args.recipes.split(",")) if args.recipes else None
    loads, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in recipe_runs(hardware="cpu"):
            if wanted is not None and run.recipe not in wanted:
                continue
            scratch = Path(tmp) / run.recipe
            scratch.mkdir()
            from gpu_check import _config_path, _importable

            if run.needs is not None and not _importable(run.needs):
                rows.append((run.recipe, None, f"needs {run.needs}"))
                continue
            overrides = run.make_data(scratch, False, _config_path(run))
            overrides += [f"train.precision={args.precision}"] if args.precision else []
            results: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.repeats):
                for compile in (False, True):
                    loads.append(os.getloadavg()[0])
                    results[compile].append(_timed_run(run.recipe, overrides, steps=args.steps, compile=compile, scratch=scratch,
                                                      timeout=args.run_timeout))
                    print(f"{run.recipe} compile={compile}: {results[compile][-1]}", file=sys.stderr, flush=True)
            rows.append((run.recipe, results, None))
    print(f"CPU: {cpu_description()}; cores {os.cpu_count()}; torch {torch.__version__}; 1 thread; {args.steps} steps per run, "
          f"precision {args.precision or 'of each config'}, "
          f"end to end (set-up and a cold compile included), medians of {args.repeats}")
    print(f"load average (1 min) at the runs' starts: median {statistics.median(loads) if loads else 0:.2f}, "
          f"max {max(loads, default=0):.2f} (other processes on the machine)")
    print(f"{'recipe':15s} {'eager/s':>9s} {'compiled/s':>10s} {'compile s':>9s} {'ratio':>6s} {'loss end e/c':>17s}  note")
    for recipe, results, note in rows:
        if results is None:
            print(f"{recipe:15s} {'-':>9s} {'-':>10s} {'-':>9s} {'-':>6s} {'-':>17s}  skipped: {note}")
            continue
        ok = {mode: [r for r in runs if "error" not in r] for mode, runs in results.items()}
        errors = sorted({r["error"] for runs in results.values() for r in runs if "error" in r})
        med = {mode: statistics.median(r["samples_per_s"] for r in runs) if runs else None for mode, runs in ok.items()}
        pairs = [compile_seconds(e, c) for e, c in zip(ok[False], ok[True])]
        comp = statistics.median(p for p in pairs if p is not None) if any(p is not None for p in pairs) else None
        loss = {mode: statistics.median(r["loss_end"] for r in runs) if runs else None for mode, runs in ok.items()}
        ratio = med[True] / med[False] if med[True] and med[False] else None
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{recipe:15s} {fmt(med[False], '9.1f')} {fmt(med[True], '10.1f')} {fmt(comp, '9.1f')} {fmt(ratio, '6.2f')} "
              f"{fmt(loss[False], '.4g'):>8s}/{fmt(loss[True], '.4g'):<8s}  {'; '.join(errors)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(sys.argv[5])), sys.argv[6])
    else:
        main()
