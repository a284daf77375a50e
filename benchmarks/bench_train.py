"""Training throughput of the digit4 recipe: the genflow engine vs a plain PyTorch loop, same model.

    python benchmarks/bench_train.py [--steps 60] [--batch-size 32] [--points 500]

Both loops run the same Digit4Flow model, loss and Adam optimiser on the same synthetic clouds; the
plain loop is the baseline (no Accelerate, no logging, no checkpoints). Ratios are engine / baseline,
measured in the same run. Also bf16 autocast through the engine (on CPU it is usually slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genflow.engine.precision import cpu_description
from genflow.engine import TrainConfig
from genflow.data import ShardWriter
from genflow.engine.metrics_log import read_metrics
from genflow.engine.recipe import StepContext
from genflow.engine.trainer import train
from genflow_recipes.digit4.recipe import Digit4Config, Digit4Recipe


def make_data(root: Path, samples: int, points: int) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(root, {"points": ((points, 2), "float32")}) as writer:
        for split, n in (("train", samples), ("test", 64)):
            writer.write(split, points=rng.uniform(-1, 1, (n, points, 2)).astype(np.float32))
    return root


def plain_loop(recipe: Digit4Recipe, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    data, _ = recipe.build_datasets()
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    points = torch.stack([data[i]["points"] for i in range(len(data))])
    start = None
    for step in range(steps + 5):
        if step == 5:  # warm-up steps excluded
            start = time.perf_counter()
        idx = torch.randint(0, len(points), (batch_size,))
        ctx = StepContext(step=step, micro_step=step, epoch=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(step))
        loss, _ = recipe.compute_loss(model, {"points": points[idx]}, ctx)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return steps / (time.perf_counter() - start)


def engine_loop(recipe: Digit4Recipe, run_dir: Path) -> float:
    """Steps/s inside the engine's loop, from its own throughput log (the first window is warm-up)."""
    train(recipe, run_dir, show_progress=False)
    rates = [r["samples_per_s"] for r in read_metrics(run_dir) if r["kind"] == "train"][1:]
    return float(np.mean(rates)) / recipe.config.train.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--points", type=int, default=500)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", samples=args.batch_size * args.steps, points=args.points)
        rows = []

        def recipe(precision: str) -> Digit4Recipe:
            cfg = Digit4Config()
            cfg.data.path = str(data)
            # one epoch of exactly `steps` steps; no evaluation inside the timed region
            cfg.train = TrainConfig(epochs=1, batch_size=args.batch_size, precision=precision, eval_every=10**6,
                                    checkpoint_every=10**6, log_every=10, best_metric="val_loss")
            return Digit4Recipe(cfg)

        baseline = plain_loop(recipe("no"), args.steps, args.batch_size)
        rows.append(("plain PyTorch loop (baseline)", baseline))
        for precision in ("no", "bf16"):
            rows.append((f"genflow engine, precision={precision}", engine_loop(recipe(precision), Path(tmp) / f"run-{precision}")))
    print(f"digit4 training, batch {args.batch_size} x {args.points} points, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{'loop':42s} {'steps/s':>9s} {'samples/s':>10s} {'ratio':>7s}")
    for name, rate in rows:
        print(f"{name:42s} {rate:9.2f} {rate * args.batch_size:10.0f} {rate / baseline:7.2f}")


if __name__ == "__main__":
    main()
