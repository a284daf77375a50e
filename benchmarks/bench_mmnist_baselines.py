"""Trivial future-frame predictors on the Moving MNIST test split, as ratios to all-black.

    python benchmarks/bench_mmnist_baselines.py [--data datasets/mmnist] [--limit 1000]

The reference a world model must beat (`genflow eval video` reports the same rows beside the model,
on the sequences it decodes). Needs `genflow data make-moving-mnist` first.
"""

from __future__ import annotations

import argparse

import numpy as np

from genflow.engine.precision import cpu_description
from genflow_recipes.mmnist_wm.world import dequantise
from genflow.data.shards import load_split
from genflow_recipes.mmnist_wm.metrics import all_black_prediction, copy_last_prediction, frame_mse, frame_psnr, frame_ssim, shifted_last_frame_prediction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="datasets/mmnist")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--past", type=int, default=10)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine
    data = load_split(args.data, "test", ["tokens", "actions"])
    tokens, actions = dequantise(data["tokens"][: args.limit]), data["actions"][: args.limit]
    past, future = tokens[:, : args.past], tokens[:, args.past :]
    steps = future.shape[1]
    pixels_per_unit = tokens.shape[-1] / 2
    predictors = {
        "all_black": all_black_prediction(past, steps),
        "copy_last": copy_last_prediction(past, steps),
        "constant_velocity": shifted_last_frame_prediction(past, np.repeat(actions[:, args.past - 1 : args.past], steps, axis=1), pixels_per_unit),
        "action_shift": shifted_last_frame_prediction(past, actions[:, args.past :], pixels_per_unit),
    }
    black_mse = frame_mse(predictors["all_black"], future).mean()
    print(f"{len(tokens)} test sequences, {args.past} past -> {steps} future frames, 32 x 32, means over the future frames")
    print(f"{'predictor':18s} {'MSE/frame':>10s} {'PSNR dB':>8s} {'SSIM':>6s} {'MSE / all-black':>16s}")
    for name, prediction in predictors.items():
        mse = frame_mse(prediction, future).mean()
        print(f"{name:18s} {mse:10.1f} {frame_psnr(prediction, future).mean():8.2f} {frame_ssim(prediction, future).mean():6.3f} {mse / black_mse:16.2f}")


if __name__ == "__main__":
    main()
