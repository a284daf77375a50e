"""Cost of one mmnist-wm training sequence: the source's "fast" model vs the CPU default, same run.

    python benchmarks/bench_mmnist_cost.py [--batches 3] [--precision fp32|bf16|both]

Times one training step of each config (its own masking objective and loss, `Recipe.compute_loss`,
then backward and an AdamW step) on random 20 x 32 x 32 token videos at the config's batch size, and
prints seconds per sequence, sequences per hour and the ratio to the source's fast config
measured in the same run. The CPU the numbers belong to is printed first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from genflow.config import load_config
from genflow.engine.precision import cpu_description
from genflow.engine.recipe import StepContext
from genflow_recipes.mmnist_wm.recipe import MovingMnistWorldModelRecipe, WorldModelConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = {"source fast (mmnist_wm_fast.yaml)": "mmnist_wm_fast.yaml", "CPU default (mmnist_wm.yaml)": "mmnist_wm.yaml"}


def seconds_per_sequence(config: WorldModelConfig, batches: int, bf16: bool) -> float:
    torch.manual_seed(0)
    recipe = MovingMnistWorldModelRecipe(config)
    model = recipe.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, frames, side = config.train.batch_size, config.model.num_frames, config.model.frame_size
    data = {"tokens": torch.randint(0, 16, (batch, frames, side, side)), "actions": torch.rand(batch, frames, 2) * 0.2 - 0.1}
    calls = iter(range(10**6))

    def step() -> None:
        index = next(calls)
        ctx = StepContext(step=index, micro_step=index, epoch=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(index))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = recipe.compute_loss(model, data, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - start) / (batches * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    baseline = None
    print(f"{'config':36s} {'precision':9s} {'batch':>5s} {'s / sequence':>12s} {'sequences / h':>13s} {'vs source fp32':>14s}")
    for label, name in CONFIGS.items():
        config = load_config(WorldModelConfig, RECIPES / name)
        for precision in precisions:
            seconds = seconds_per_sequence(config, args.batches, precision == "bf16")
            baseline = baseline or seconds
            print(f"{label:36s} {precision:9s} {config.train.batch_size:5d} {seconds:12.4f} {3600 / seconds:13.0f} {baseline / seconds:13.1f}x")


if __name__ == "__main__":
    main()
