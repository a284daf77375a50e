"""Where a dtm training step's time goes: the whole step, its Gibbs sweeps, and the random draw inside a sweep.

The step is config S of benchmarks/parity/dtm.py (MNIST-sized: 784 pixels, 10 classes x 10 label spots, graph
44_12, T = 3, batch 64, 40 + 9 x 4 sweeps per phase, the reference's layout, compiled sampler) on synthetic
binary images, so it needs no dataset. Printed, each the best of `--repeats` timed windows after warm-up:

* step — one training step: noised pairs, both phases of every denoising step, moments, Adam;
* sweeps — the same number of sweeps (T x 2 phases x 76) alone, all sites free, no moments;
* sweeps without the draw — the same with the uniforms replaced by a constant (not a sampler: it shows
  what the Philox draw costs inside a compiled sweep).

`--profile` adds torch.profiler's table of three steps. Compare runs on one machine only; the step time
against the reference's code comes from benchmarks/parity/dtm.py, which runs both side by side.

    python benchmarks/dtm_step.py [--threads 1] [--repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import time

import torch

from genflow.engine.precision import cpu_description
from genflow.ising import gibbs
from genflow.ising.dtm import DenoisingThermodynamicModel
from genflow.ising.gibbs import SamplingSchedule
from genflow.threads import ThreadBudget


def best_of(repeats: int, work) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {args.threads} thread(s)")

    model = DenoisingThermodynamicModel(graph="44_12", num_pixels=784, num_classes=10, num_label_spots=10, num_steps=3,
                                        time_grid_kind="log", time_offset=0.15, image_rate=0.9, label_rate=0.2,
                                        compile=True, threads=ThreadBudget(args.threads), placement="reference")
    generator = torch.Generator().manual_seed(0)
    levels = (torch.rand(64, 784, generator=generator) < 0.15).long()
    labels = torch.randint(0, 10, (64,), generator=generator)
    schedule = SamplingSchedule(40, 10, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def uniform(shape):
        return torch.rand(shape, generator=generator)

    def step():
        keys = torch.randint(0, 2**32, (3, 2, 2), generator=generator)
        loss, _ = model(levels, labels, schedule, keys, uniform)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # compile both phases' sweeps and the moments
        step()
    step_s = best_of(args.repeats, step)

    layer = model.steps[0]
    inputs = model.encode(levels, model.label_bits(labels).float())
    biases = (layer.colour0_bias(inputs), layer.bias1)
    weights = (layer.weight, model.graph.colour_one_weights(layer.weight))
    sweeps = 3 * 2 * schedule.sweeps
    key = torch.tensor([1, 2])

    def run_sweeps():
        state = model.sampler.chains(64, biases, 1.0, key)
        model.sampler.run(state, weights, biases, SamplingSchedule(sweeps, 1, 1), key, collect=False)

    run_sweeps()
    sweeps_s = best_of(args.repeats, run_sweeps)
    real_uniform = gibbs.philox_uniform
    gibbs.philox_uniform = lambda shape, key, call, device=None: torch.full(shape, 0.5, device=device) + call.float() * 0
    torch._dynamo.reset()  # recompile the sweep without the draw
    model.sampler = gibbs.BlockGibbsSampler(model.graph, compile=True, threads=ThreadBudget(args.threads))
    run_sweeps()
    no_draw_s = best_of(args.repeats, run_sweeps)
    gibbs.philox_uniform = real_uniform

    spins = model.graph.num_nodes * 64
    print(f"step: {step_s * 1e3:.1f} ms ({sweeps} sweeps of 64 chains x {model.graph.num_nodes} spins)")
    print(f"sweeps alone: {sweeps_s * 1e3:.1f} ms ({sweeps_s / step_s:.0%} of the step; "
          f"{sweeps_s / sweeps * 1e3:.3f} ms per sweep, {spins * sweeps / sweeps_s / 1e6:.0f} M spin updates/s)")
    print(f"sweeps without the draw: {no_draw_s * 1e3:.1f} ms (the draw: {1 - no_draw_s / sweeps_s:.0%} of a sweep)")
    if args.profile:
        model.sampler = gibbs.BlockGibbsSampler(model.graph, compile=True, threads=ThreadBudget(args.threads))
        torch._dynamo.reset()
        for _ in range(2):
            step()
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
