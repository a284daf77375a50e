"""Every recipe's GPU config trained eager and compiled on data made here: throughput, compile time, memory, loss.

    python benchmarks/gpu_check.py [--steps 200] [--recipes digit4,namo-fm] [--eager-only]
    python benchmarks/gpu_check.py --smoke      # the same code on CPU in seconds (CI)

For each recipe: its first config marked `# hardware: gpu` (`genflow recipes --configs`), else its default
config, at the precision that config asks for on a GPU (on a CPU, fp32: fp16 is a GPU precision). The data is built here from what the repository carries
(synthetic digits, generated NAMO scenes and hand poses, Moving MNIST from the synthetic digits, the
LunarLander stream where gymnasium is installed): nothing is downloaded, so it runs on a machine that
reaches no registry. Each run is `--steps` optimiser steps of that config (evaluation skipped: it runs
eager either way), timed end to end from set-up to the last step, compile included. `--smoke` shrinks
models and data to seconds per recipe on CPU and compiles one recipe only (digit4), so CI runs the whole
path. `recipe_runs` and `train_once` are what benchmarks/compile_speed.py reuses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["RecipeRun", "recipe_runs", "train_once", "synthetic_mnist", "main"]

SMOKE_COMPILED = "digit4"  # the one recipe --smoke compiles (the smallest compile)


@dataclass
class RecipeRun:
    """How to train one recipe here: its config and the overrides that point it at data made by `make_data`."""

    recipe: str
    make_data: Callable[[Path, bool, Path], list[str]]  # (scratch dir, smoke, config YAML) -> overrides (data, tiny sizes)
    config: str | None = None  # a config name of the recipe's card; None: its default config
    needs: str | None = None  # a module the data source needs (skipped, and said, when it is missing)


def synthetic_mnist(path: Path, *, train: int, test: int, seed: int = 0) -> Path:
    """An MNIST-format npz (x_train, y_train, x_test, y_test) of stroke digits: labels 0-9, each label its own
    strokes, randomly shifted. Enough for the makers that want MNIST; no download."""
    rng = np.random.default_rng(seed)
    shapes = np.random.default_rng(1234).integers(4, 24, size=(10, 3, 4))  # per label: 3 strokes (row, col, height, width)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = np.zeros((n, 28, 28), np.uint8), np.arange(n) % 10
        for i, label in enumerate(labels):
            dy, dx = rng.integers(-2, 3, size=2)
            for row, col, height, width in shapes[label]:
                top, left = min(max(row // 2 + dy, 0), 24), min(max(col // 2 + dx, 0), 24)
                images[i, top: top + max(height // 2, 2), left: left + max(width // 4, 2)] = 255
        return images, labels.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = draw(train), draw(test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _genflow(*args: str) -> None:
    """`genflow ARGS` in this process, its report silenced (the table is this script's output)."""
    from genflow.cli import main as genflow_main

    with contextlib.redirect_stdout(io.StringIO()):
        code = genflow_main([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"genflow {' '.join(map(str, args))} exited with {code}")


def _digit4(root: Path, smoke: bool, config: Path) -> list[str]:
    from genflow.data import ShardWriter

    rng, points = np.random.default_rng(0), 64 if smoke else 500
    with ShardWriter(root / "digit4", {"points": ((points, 2), "float32")}) as writer:
        for split, n in (("train", 64 if smoke else 2048), ("val", 16), ("test", 16)):
            writer.write(split, points=rng.uniform(-1, 1, (n, points, 2)).astype(np.float32))
    tiny = ["model.latent_dim=8", "model.encoder_hidden=[8,16]", "model.field_hidden=16", "model.field_depth=2",
            "model.time_dim=8", "train.batch_size=8"]
    return [f"data.path={root / 'digit4'}", *(tiny if smoke else [])]


def _dtm(root: Path, smoke: bool, config: Path) -> list[str]:
    npz = synthetic_mnist(root / "mnist.npz", train=200 if smoke else 2000, test=40 if smoke else 200)
    _genflow("data", "make", "mnist-images", f"source={npz}", f"out={root / 'images'}")
    tiny = ["model.compile=false", "model.num_steps=2", "model.num_label_spots=2", "sampling.steps_warmup=3",
            "sampling.n_samples=2", "sampling.steps_per_sample=1", "data.val_images=8", "correlation_penalty.samples=6",
            "correlation_penalty.chains=4", "correlation_penalty.images=1", "train.batch_size=16"]
    return [f"data.data_dir={root / 'images'}", *(tiny if smoke else [])]


def _dtm_lunar(root: Path, smoke: bool, config: Path) -> list[str]:
    tiny = ["model.compile=false", "sampling.steps_warmup=3", "sampling.n_samples=2", "sampling.steps_per_sample=1",
            "data.val_images=4", "train.batch_size=4", "train.num_workers=0"]
    return tiny if smoke else []


def _hands(root: Path, smoke: bool, config: Path) -> list[str]:
    _genflow("data", "make", "hands", f"n={300 if smoke else 20000}", f"out={root / 'hands'}")
    tiny = ["z_dim=8", "hidden=64", "batch_size=64"]
    return [f"data.data_dir={root / 'hands'}", *(tiny if smoke else [])]


def _moving_mnist(root: Path, smoke: bool, config: Path) -> list[str]:
    from genflow.config import load_config
    from genflow_recipes.mmnist_wm.recipe import MovingMnistWorldModelRecipe

    preprocessing = load_config(MovingMnistWorldModelRecipe.config_class, config).data.preprocessing or "area"  # the tokens it checks
    npz = synthetic_mnist(root / "mnist.npz", train=200, test=40)
    frames = 6 if smoke else 20
    _genflow("data", "make", "moving-mnist", f"preprocessing={preprocessing}", f"sequences={8 if smoke else 256}", f"val_sequences={4 if smoke else 16}",
             f"test_sequences={4 if smoke else 16}", f"frames={frames}", f"frame_size={8 if smoke else 32}", f"source={npz}", f"out={root / 'mmnist'}")
    tiny = [f"model.num_frames={frames}", "model.frame_size=8", "data.num_past=3", "model.embed_dim=32", "model.num_layers=1", "model.num_heads=2",
            "train.batch_size=4", "data.val_sequences=4"]
    return [f"data.data_dir={root / 'mmnist'}", *(tiny if smoke else [])]


def _namo(root: Path, smoke: bool, config: Path) -> list[str]:
    if not (root / "namo").exists():  # namo-fm and namo-diffusion share the scenes
        _genflow("data", "make", "namo", f"scenes={12 if smoke else 200}", f"out={root / 'namo-npz'}", "seed=3")
        _genflow("data", "import", "namo", root / "namo-npz", f"out={root / 'namo'}", "val_fraction=0.2", "test_fraction=0.2")
    tiny = ["model.network.hidden_size=32", "model.network.depth=1", "model.network.num_heads=2", "model.network.patch_size=8",
            "train.batch_size=4", "train.warmup_steps=0"]
    return [f"data.data_dir={root / 'namo'}", *(tiny if smoke else [])]


def recipe_runs(*, hardware: str) -> list[RecipeRun]:
    """Every installed recipe with its data maker; `hardware`: 'gpu' picks each recipe's first `# hardware: gpu`
    config (its default where it has none), 'cpu' its default config."""
    from genflow.engine.card import config_header
    from genflow.engine.catalog import recipe_entries

    makers = {"digit4": (_digit4, None), "dtm": (_dtm, None), "dtm-lunar": (_dtm_lunar, "gymnasium"),
              "hand-vae": (_hands, None), "mmnist-wm": (_moving_mnist, None), "namo-fm": (_namo, None),
              "namo-diffusion": (_namo, None)}
    runs = []
    for entry in recipe_entries():
        if entry.name not in makers:  # a third-party recipe: this script knows no data for it
            print(f"skipped {entry.name}: no data maker in benchmarks/gpu_check.py", file=sys.stderr)
            continue
        config = None
        if hardware == "gpu":
            gpu = [name for name in entry.card.config_names()
                   if config_header(entry.card.resolve_config(name)).hardware == "gpu"]
            config = gpu[0] if gpu else None
        make_data, needs = makers[entry.name]
        runs.append(RecipeRun(entry.name, make_data, config, needs))
    return runs


def _steady_rate(records: list[dict]) -> float | None:
    """Samples/s of the log windows after the first (which holds the compile and the warm-up)."""
    rates = [r["samples_per_s"] for r in records[1:] if r.get("samples_per_s")]
    return float(np.median(rates)) if rates else None


def train_once(run: RecipeRun, overrides: list[str], *, steps: int, compile: bool, runs_root: Path,
               log_every: int = 10, threads: int | None = None) -> dict:
    """Train `run` for `steps` optimiser steps (no evaluation, no periodic checkpoints) and time it end to end.

    Returns samples_per_s (end to end), steady_samples_per_s (log windows after the first), seconds,
    loss_start / loss_end (first and last logged window), precision (resolved), peak_memory_mib.
    """
    import torch

    from genflow.engine.metrics_log import read_metrics
    from genflow.engine.run_dir import read_run_config
    from genflow.engine.run_setup import prepare_training
    from genflow.engine.trainer import Trainer, train

    fixed = [f"train.max_steps={steps}", f"train.compile={str(compile).lower()}", "train.epochs=100000",
             "train.eval_every=100000", "train.checkpoint_every=100000", "train.checkpoint_every_steps=null",
             "train.log_with=none", f"train.log_every={log_every}", "train.early_stop_patience=null"]
    if threads is not None:
        fixed.append(f"train.threads={threads}")
    plan = prepare_training(run.recipe, config_path=run.config, overrides=[*overrides, *fixed], runs_root=runs_root,
                            name=f"{'compiled' if compile else 'eager'}-{time.time_ns()}")
    cfg = plan.recipe.config.train
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    evaluate = Trainer.evaluate
    Trainer.evaluate = lambda self: {}  # the timed part is training: evaluation runs eager with or without compile
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the run's own lines; stdout is the table
            result = train(plan.recipe, plan.run_dir, show_progress=False)
        seconds = time.perf_counter() - start
    finally:
        Trainer.evaluate = evaluate
    records = [r for r in read_metrics(plan.run_dir) if r["kind"] == "train"]
    runtime = read_run_config(plan.run_dir).get("runtime", {})
    samples = result.samples_seen
    return {"samples_per_s": samples / seconds, "steady_samples_per_s": _steady_rate(records), "seconds": seconds,
            "samples": samples, "loss_start": records[0]["loss"] if records else math.nan,
            "loss_end": records[-1]["loss"] if records else math.nan, "peak_memory_mib": result.peak_memory_mib,
            "precision": runtime.get("precision", cfg.precision)}


def compile_seconds(eager: dict, compiled: dict) -> float | None:
    """The compile's share of the compiled run: its time beyond its steady rate, less the eager run's (set-up, warm-up)."""
    if not eager["steady_samples_per_s"] or not compiled["steady_samples_per_s"]:
        return None
    overhead = lambda r: r["seconds"] - r["samples"] / r["steady_samples_per_s"]  # noqa: E731
    return max(overhead(compiled) - overhead(eager), 0.0)


def _cell(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per run")
    parser.add_argument("--recipes", default=None, help="comma-separated recipe names (default: all)")
    parser.add_argument("--eager-only", action="store_true", help="skip the compiled runs")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data on CPU, 3 steps, compile digit4 only")
    args = parser.parse_args(argv)

    import torch

    from genflow.engine.precision import cpu_description

    steps, log_every = (3, 1) if args.smoke else (args.steps, max(args.steps // 10, 1))
    on_gpu = torch.cuda.is_available() and not args.smoke
    device = torch.cuda.get_device_name() if on_gpu else f"CPU {cpu_description()}"
    wanted = set(args.recipes.split(",")) if args.recipes else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in recipe_runs(hardware="gpu"):
            if wanted is not None and run.recipe not in wanted:
                continue
            row = {"recipe": run.recipe, "config": run.config or "(default)"}
            rows.append(row)
            if run.needs is not None and not _importable(run.needs):
                row["skipped"] = f"needs {run.needs}"
                continue
            scratch = Path(tmp) / run.recipe
            scratch.mkdir()
            started = time.perf_counter()
            overrides = run.make_data(scratch, args.smoke, _config_path(run))
            row["data_s"] = time.perf_counter() - started
            requested = _configured_precision(run)
            if not on_gpu:  # the CPU path checks the code, in fp32 (fp16 is a GPU precision; bf16 depends on the CPU)
                overrides.append("train.precision=no")
            modes = [False] if args.eager_only or (args.smoke and run.recipe != SMOKE_COMPILED) else [False, True]
            for compile in modes:
                try:
                    stats = train_once(run, overrides, steps=steps, compile=compile, runs_root=Path(tmp) / "runs",
                                       log_every=log_every)
                except Exception as exc:  # noqa: BLE001 - a failed or diverged run is a row of the table
                    row["skipped"] = f"{'compiled' if compile else 'eager'}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    break
                row["compiled" if compile else "eager"] = stats
                row["precision"] = f"{requested}->{stats['precision']}"
            if "compiled" in row and "skipped" not in row:
                row["compile_s"] = compile_seconds(row["eager"], row["compiled"])
            print(f"{run.recipe}: data {row['data_s']:.1f} s, runs {sum(row[m]['seconds'] for m in ('eager', 'compiled') if m in row):.1f} s",
                  file=sys.stderr, flush=True)
    print_table(rows, device=device, steps=steps, torch_version=torch.__version__)
    return rows


def _config_path(run: RecipeRun) -> Path:
    from genflow.engine.catalog import find_recipe

    return find_recipe(run.recipe).load().config_file(run.config)


def _configured_precision(run: RecipeRun) -> str:
    """The precision `run`'s config asks for (`auto` resolves per machine)."""
    from genflow.config import load_config
    from genflow.engine.catalog import find_recipe

    return str(load_config(find_recipe(run.recipe).load().config_class, _config_path(run)).train.precision)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def print_table(rows: list[dict], *, device: str, steps: int, torch_version: str) -> None:
    print(f"device: {device}; torch {torch_version}; {steps} steps per run, end to end (set-up and compile included)")
    header = (f"{'recipe':15s} {'config':22s} {'precision':12s} {'eager/s':>9s} {'compiled/s':>10s} {'compile s':>9s} "
              f"{'peak MiB':>9s} {'loss start':>10s} {'loss end':>9s}")
    print(header)
    for row in rows:
        if "skipped" in row:
            print(f"{row['recipe']:15s} {row['config']:22s} failed or skipped: {row['skipped']}")
            continue
        eager, compiled = row["eager"], row.get("compiled")
        last = compiled or eager
        print(f"{row['recipe']:15s} {row['config']:22s} {row['precision']:12s} {eager['samples_per_s']:9.1f} "
              f"{_cell(compiled and compiled['samples_per_s'], '10.1f'):>10s} {_cell(row.get('compile_s'), '9.1f'):>9s} "
              f"{_cell(max(r['peak_memory_mib'] or 0 for r in (eager, last)), '9.0f'):>9s} "
              f"{_cell(last['loss_start'], '10.4g'):>10s} {_cell(last['loss_end'], '9.4g'):>9s}")


if __name__ == "__main__":
    main()
