"""What keeps the digits in view: mmnist-wm variants trained at equal CPU time, ranked on val.

    python benchmarks/mmnist_digits.py --data datasets/mmnist --minutes 30 [--variants patch4 patch2 ...]
        [--runs-dir runs/digits] [--parallel 2] [--calibrate-steps 6] [--val 50] [--reference patch4=1106]

``--reference NAME=STEPS`` adds variants to an earlier batch: NAME (trained before, with STEPS steps)
is calibrated again beside them and the budget is the time its STEPS take, so a busier or quieter
machine between the batches does not change the comparison.

1. Calibration: one process, one thread, each variant's training step (`Recipe.compute_loss`,
   backward, AdamW) timed on the same random batch, after a warm-up step. The ratios are what the
   budget is divided by; the CPU is printed.
2. Each variant trains with ``train.max_steps`` = the steps its measured step time fits into
   ``--minutes`` of one thread (its cosine schedule ends there), in its own ``genflow train``
   process pinned to one thread (``--parallel`` of them at a time), at a constant learning rate after
   warm-up (a schedule over the epochs would not end at the budget): equal compute, whatever else
   the machine runs meanwhile. Validation every ``--eval-every-steps`` steps logs the learning curve (``val_future_ce``,
   copilot4D's loss; ``val_ink_recall`` of MaskGIT) against sequences seen.
3. Each best checkpoint (chosen on ``val_loss``) is scored by ``genflow eval video --split val``
   on the first ``--val`` sequences; the table prints MaskGIT's ink recall and precision at
   horizons 1, 3, 5 and 10, and its MSE under both definitions, beside copy-last and all-black.

Report the winner on test with ``genflow eval video RUN`` (split test) afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

VARIANTS: dict[str, list[str]] = {
    "patch4": [],  # the CPU default (mmnist_wm.yaml): 4 x 4 tokens per position, 64 positions per frame
    "patch2": ["model.patch_size=2"],  # 256 positions per frame
    "patch4-wide": ["model.embed_dim=192", "model.num_heads=6"],
    "patch4-deep": ["model.num_layers=4"],
    "patch4-source-optimiser": ["train.lr=3e-4", "train.batch_size=4", "train.warmup_steps=0"],  # the fast script's
    "patch4-joint-attention": ["model.attention=joint"],
    "patch4-ar": ["model.patch_head=autoregressive"],  # each token of a patch also from the patch's earlier tokens
}


def step_seconds(overrides: list[str], steps: int) -> float:
    from genflow.config import load_config
    from genflow.engine.recipe import StepContext
    from genflow_recipes.mmnist_wm.recipe import MovingMnistWorldModelRecipe, WorldModelConfig

    config = load_config(WorldModelConfig, Path(__file__).resolve().parents[1] / "recipes/mmnist_wm/configs/mmnist_wm.yaml", overrides)
    recipe = MovingMnistWorldModelRecipe(config)
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, frames, side = config.train.batch_size, config.model.num_frames, config.model.frame_size
    data = {"tokens": torch.randint(0, 16, (batch, frames, side, side)), "actions": torch.rand(batch, frames, 2) * 0.2 - 0.1}
    times = []
    for index in range(steps + 1):
        ctx = StepContext(step=index, micro_step=index, epoch=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(index))
        start = time.perf_counter()
        loss, _ = recipe.compute_loss(model, data, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])  # the least disturbed step: a busy neighbour only adds time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="datasets/mmnist")
    parser.add_argument("--minutes", type=float, default=30.0, help="one-thread training budget of every variant")
    parser.add_argument("--variants", nargs="+", default=["patch4", "patch2"], choices=sorted(VARIANTS))
    parser.add_argument("--runs-dir", default="runs/digits")
    parser.add_argument("--parallel", type=int, default=2, help="variants trained at once (one thread each)")
    parser.add_argument("--calibrate-steps", type=int, default=6)
    parser.add_argument("--eval-every-steps", type=int, default=100, help="an epoch's length: validation (the learning curve) after each")
    parser.add_argument("--val", type=int, default=50, help="val sequences the table is scored on")
    parser.add_argument("--score-only", action="store_true", help="skip training: score the runs already there")
    parser.add_argument("--curves", default=None, metavar="PNG", help="also plot val_future_ce and val_ink_recall against "
                        "training sequences seen, for the variants and every --also run")
    parser.add_argument("--also", nargs="*", default=[], metavar="RUN", help="other run dirs for --curves (e.g. the CPU default)")
    parser.add_argument("--reference", default=None, metavar="NAME=STEPS",
                        help="a variant trained before (not retrained): the budget is the time its STEPS take in this calibration")
    args = parser.parse_args()

    from genflow.engine.precision import cpu_description

    torch.set_num_threads(1)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    genflow = [str(Path(sys.executable).with_name("genflow"))]
    runs = Path(args.runs_dir)
    if not args.score_only:
        reference, reference_steps = (args.reference.split("=") + [None])[:2] if args.reference else (None, None)
        calibrated = ([reference] if reference else []) + [name for name in args.variants if name != reference]
        seconds = {name: step_seconds(VARIANTS[name], args.calibrate_steps) for name in calibrated}
        budget = int(reference_steps) * seconds[reference] if reference else args.minutes * 60
        # a multiple of the validation interval, so the last steps are validated (and can be the best checkpoint)
        steps = {name: args.eval_every_steps * max(1, round(budget / s / args.eval_every_steps)) for name, s in seconds.items()}
        base = seconds[calibrated[0]]
        for name in calibrated:
            print(f"{name:26s} {seconds[name]:.3f} s/step ({seconds[name] / base:.2f}x {calibrated[0]}) -> {steps[name]} steps"
                  + (" (trained before)" if name == reference else ""))
        pending = [name for name in args.variants if name != reference]
        active: list[subprocess.Popen] = []
        while pending or active:
            while pending and len(active) < args.parallel:
                name = pending.pop(0)
                runs.mkdir(parents=True, exist_ok=True)
                log = open(runs / f"{name}.log", "w")
                command = [*genflow, "train", "mmnist-wm", "--runs-dir", str(runs), "--name", name, "--no-progress",
                           f"data.data_dir={args.data}", f"train.max_steps={steps[name]}", "train.epochs=1000", "train.eval_every=1", "train.lr_schedule=constant",
                           f"train.batches_per_epoch={args.eval_every_steps}",
                           f"data.val_sequences={args.val}", *VARIANTS[name]]
                print(" ".join(command[2:]), flush=True)
                active.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(10)
            for process in [p for p in active if p.poll() is not None]:
                active.remove(process)
                if process.returncode:
                    print(f"a training exited with {process.returncode}: see {runs}/*.log", flush=True)
    print("\n| variant | steps | val_future_ce | ink recall h1 / h3 / h5 / h10 | ink precision h1 / h3 / h5 / h10 | MSE (sum) | MSE (per pixel) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        run = runs / "mmnist-wm" / name
        out = subprocess.run([*genflow, "eval", "video", str(run), "split=val", f"limit={args.val}", "figure=false", "--json"],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | eval failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} |")
            continue
        result = json.loads(out.stdout)
        horizon = result["per_horizon"]["model"]
        pick = lambda values: " / ".join(f"{values[h - 1]:.2f}" for h in (1, 3, 5, 10) if h <= len(values))  # noqa: E731
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        val = [m for m in metrics if m.get("kind") == "val"]
        steps_done = max((m.get("step", 0) for m in metrics), default=0)
        ce = min((m["val_future_ce"] for m in val if "val_future_ce" in m), default=float("nan"))
        print(f"| {name} | {steps_done} | {ce:.4f} | {pick(horizon['ink_recall'])} | {pick(horizon['ink_precision'])} | "
              f"{result['model_mse_32']:.1f} | {result['model_pixel_mse_32']:.4f} |")
    print("\nbaselines on the same val sequences: see any run's eval (copy_last / all_black rows).")
    if args.curves:
        plot_curves([runs / "mmnist-wm" / name for name in args.variants] + [Path(run) for run in args.also], Path(args.curves))


def plot_curves(run_dirs: list[Path], path: Path) -> None:
    """Validation curves against training sequences seen (steps x batch), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for run in run_dirs:
        batch = yaml.safe_load((run / "config.yaml").read_text())["config"]["train"]["batch_size"]
        val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
        val = [v for v in val if v.get("kind") == "val" and "val_future_ce" in v]
        seen = [v["step"] * batch for v in val]
        axes[0].plot(seen, [v["val_future_ce"] for v in val], marker="o", ms=3, label=run.name)
        axes[1].plot(seen, [v["val_ink_recall"] for v in val], marker="o", ms=3, label=run.name)
    axes[0].set_title("val_future_ce (copilot4D's validation loss)", fontsize=9)
    axes[1].set_title("MaskGIT ink recall, mean of horizons 1-10 (val)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training sequences seen")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"curves: {path}")


if __name__ == "__main__":
    main()
