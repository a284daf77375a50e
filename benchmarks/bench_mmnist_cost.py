"""Cost of one mmnist-wm training sequence: the source's "fast" model vs the CPU default, same run.

    python benchmarks/bench_mmnist_cost.py [--batches 3] [--precision fp32|bf16|both]

Times forward + backward + AdamW step of each config's SimpleVideoTransformer on random 20 x 32 x 32
token videos at the config's own batch size (the loss: future-token cross-entropy, as training),
and prints seconds per sequence, sequences per hour and the ratio to the source's fast config
measured in the same run. The CPU the numbers belong to is printed first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genflow.config import load_config
from genflow.engine.precision import cpu_description
from recipes.mmnist_wm import MovingMnistWorldModelRecipe, WorldModelConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = {"source fast (mmnist_wm_fast.yaml)": "mmnist_wm_fast.yaml", "CPU default (mmnist_wm.yaml)": "mmnist_wm.yaml"}


def seconds_per_sequence(config: WorldModelConfig, batches: int, bf16: bool) -> float:
    torch.manual_seed(0)
    recipe = MovingMnistWorldModelRecipe(config)
    model = recipe.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, past = config.train.batch_size, config.data.num_past
    tokens = torch.randint(0, 16, (batch, config.model.num_frames, config.model.frame_size, config.model.frame_size))
    actions = torch.rand(batch, config.model.num_frames, 2) * 0.2 - 0.1
    inputs = tokens.clone()
    inputs[:, past:] = 16

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs, actions, "causal")
        loss = F.cross_entropy(logits[:, past:].reshape(-1, 16).float(), tokens[:, past:].reshape(-1))
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
