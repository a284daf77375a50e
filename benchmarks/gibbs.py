"""Block Gibbs spin updates per second: genflow's stencil sampler vs THRML (JAX), same graph, same run.

Graph 80_12 (80 x 80 torus, jumps (0,1), (4,1), (10,9) in four rotations: degree 12), all 6400 spins
free, random biases and couplings (normal x 0.1), β = 1. A "sweep" updates both colours, i.e. every
spin once; rate = chains x 6400 x sweeps / seconds, with only the final state kept (no per-sweep
observation) on both sides. Compilation is excluded; each figure is the fastest of `--repeats` timed
windows of at least `--min-seconds`, over `--rounds` rounds that each run THRML and genflow in turn
(a shared 2-core machine varies by 2x from minute to minute; every cell gets the same chances).

* genflow compiled — `BlockGibbsSampler(compile=True)`: packed half-grids, fused Philox draw;
* genflow eager — the same code without torch.compile;
* THRML — its own jitted, vmapped sampler, run by `benchmarks/gibbs_thrml.py` in its own virtual
  environment (`make bench-gibbs` creates `.venv-thrml`; THRML and JAX are not genflow dependencies).
  Its edges follow its (column, row) jump convention: the mirror image of genflow's graph, isomorphic.

    python benchmarks/gibbs.py [--batches 1,16,64,256] [--min-seconds 1] [--thrml-python .venv-thrml/bin/python]
    python benchmarks/gibbs.py --no-thrml --no-eager --threads auto|1|2 --busy 1   # the CPU shared with a busy process
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from genflow.engine.precision import cpu_description
from genflow.threads import ThreadBudget
from genflow.ising.graph import TorusGraph
from genflow.ising.gibbs import BlockGibbsSampler, SamplingSchedule


def genflow_rate(graph: TorusGraph, batch: int, compile: bool, min_seconds: float, repeats: int,
                 threads: ThreadBudget | None = None) -> float:
    g = torch.Generator().manual_seed(0)
    H, D = graph.half, graph.degree
    w0 = torch.randn(2, D, H, H, generator=g) * 0.1
    weights = (w0, graph.colour_one_weights(w0))
    biases = (torch.randn(2, H, H, generator=g) * 0.1, torch.randn(2, H, H, generator=g) * 0.1)
    sampler = BlockGibbsSampler(graph, compile=compile, threads=threads)
    key = torch.tensor([1, 2])
    state = sampler.chains(batch, biases, 1.0, key)

    def run(sweeps: int, call: int) -> float:
        start = time.perf_counter()
        sampler.run(state, weights, biases, SamplingSchedule(sweeps, 1, 1), torch.tensor([3, call]), collect=False)
        return time.perf_counter() - start

    run(2, 0)  # compile / warm up
    sweeps = 2
    while run(sweeps, 1) < min_seconds / 4:
        sweeps *= 2
    best = 0.0
    for r in range(repeats):
        done, seconds = 0, 0.0
        while seconds < min_seconds:
            seconds += run(sweeps, 10 + r)
            done += sweeps
        best = max(best, batch * graph.num_nodes * done / seconds)
    return best


def thrml_rates(python: str, batches: list[int], min_seconds: float, repeats: int) -> dict[int, float] | None:
    script = Path(__file__).with_name("gibbs_thrml.py")
    if not Path(python).exists():
        print(f"THRML environment not found ({python}); create it with `make bench-gibbs` or pass --thrml-python", file=sys.stderr)
        return None
    out = subprocess.run([python, str(script), "--batches", ",".join(map(str, batches)), "--min-seconds", str(min_seconds),
                          "--repeats", str(repeats)], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"THRML {doc['thrml_version']} on JAX {doc['jax_version']}", file=sys.stderr)
    return {r["batch"]: r["spin_updates_per_s"] for r in doc["results"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--graph", default="80_12")
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--thrml-python", default=".venv-thrml/bin/python")
    p.add_argument("--no-eager", action="store_true", help="skip the eager (uncompiled) column")
    p.add_argument("--no-thrml", action="store_true", help="skip THRML (genflow columns only)")
    p.add_argument("--threads", default=None,
                   help="genflow's threads: N, or auto (ThreadBudget: the cores other processes leave free); default: torch's choice")
    p.add_argument("--busy", type=int, default=0, help="busy-loop processes competing for the CPU while measuring")
    args = p.parse_args()
    args.budget = None
    if args.threads == "auto":
        args.budget = ThreadBudget()
    elif args.threads:
        torch.set_num_threads(int(args.threads))
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine
    competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    if competitors:
        print(f"{len(competitors)} busy-loop process(es) share the CPU while measuring")
    try:
        measure(args)
    finally:
        for competitor in competitors:
            competitor.kill()


def measure(args) -> None:
    batches = [int(b) for b in args.batches.split(",")]
    graph = TorusGraph.from_preset(args.graph)
    if args.graph != "80_12":
        print("THRML runs on 80_12 only here; its column is for that graph", file=sys.stderr)
    thrml: dict[int, float] = {}
    compiled: dict[int, float] = {}
    eager: dict[int, float] = {}
    for _ in range(args.rounds):
        found = (thrml_rates(args.thrml_python, batches, args.min_seconds, args.repeats)
                 if args.graph == "80_12" and not args.no_thrml else None)
        for batch in batches:
            if found:
                thrml[batch] = max(thrml.get(batch, 0.0), found[batch])
            compiled[batch] = max(compiled.get(batch, 0.0), genflow_rate(graph, batch, True, args.min_seconds, args.repeats, args.budget))
            if not args.no_eager:
                eager[batch] = max(eager.get(batch, 0.0), genflow_rate(graph, batch, False, args.min_seconds, args.repeats, args.budget))
    threads = (f"auto threads (changes: {args.budget.changes or 'none'}; (threads, other processes' cores))" if args.budget
               else f"{torch.get_num_threads()} threads")
    print(f"graph {graph.name} ({graph.num_nodes} spins), torch {torch.__version__}, {threads}; "
          f"M spin updates / s (fastest of {args.repeats} windows x {args.rounds} rounds)")
    print(f"{'batch':>5} | {'THRML':>8} | {'genflow eager':>13} | {'genflow compiled':>16} | {'compiled / THRML':>16}")
    for batch in batches:
        base = thrml.get(batch)
        ratio = f"{compiled[batch] / base:.2f}x" if base else "n/a"
        print(f"{batch:>5} | {base / 1e6 if base else float('nan'):>8.1f} | {eager.get(batch, float('nan')) / 1e6:>13.1f} | "
              f"{compiled[batch] / 1e6:>16.1f} | {ratio:>16}", flush=True)


if __name__ == "__main__":
    main()
