"""The `genflow` command line: a thin Typer layer over the library.

    genflow recipes | data ... | config | train | sample | eval | export

Nothing here knows a recipe: `sample` and `eval` take the options a recipe declares
(`genflow sample RUN key=value`; `--key value` is the same), and `data make KIND` / `data import KIND`
run the data commands registered under genflow's entry points.

A user error (GenflowError) prints one line and exits with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text
from rich.table import Table

from genflow.errors import ConfigError, GenflowError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="genflow: data -> HDF5 shards -> train -> sample -> eval -> export, one recipe at a time.")
data_app = typer.Typer(no_args_is_help=True, help="Make, import, list, inspect and verify HDF5 shard datasets.")
app.add_typer(data_app, name="data")
runs_app = typer.Typer(no_args_is_help=True, help="List and compare run directories in one table; import runs "
                       "trained elsewhere as genflow run directories.")
app.add_typer(runs_app, name="runs")

# Markup off: paths, keys and values a user typed print as typed (a path like runs/exp[1] is not a style tag)
console = Console(soft_wrap=True, markup=False, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
_state = {"debug": False}
# commands whose options come from a recipe or a data command: `--key value` and `key=value` are theirs
FREE_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _version(value: bool) -> None:
    if value:
        from genflow import __version__

        console.print(f"genflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


# --- recipes ------------------------------------------------------------------------------------------
@app.command("recipes")
def recipes_command(configs: bool = typer.Option(False, "--configs", help="List every config of every recipe: its "
                                                 "hardware (cpu / gpu) and purpose; `genflow config RECIPE --config "
                                                 "NAME > mine.yaml` copies one out.")) -> None:
    """List the installed recipes: name, configs (the first is the default; `--config NAME` picks another), summary."""
    from genflow.engine.card import config_header
    from genflow.engine.catalog import recipe_entries  # read from the recipe cards: no torch import, well under 1 s

    entries = recipe_entries()
    if not configs:
        rows = [(e.name, ", ".join(p.name for p in e.card.configs) or "-", e.summary) for e in entries]
        return _print_plain(_aligned(("name", "configs (default first)", "summary"), rows))
    rows = []
    for entry in entries:
        for index, path in enumerate(entry.card.configs):
            header = config_header(path)
            rows.append((entry.name, path.stem + (" (default)" if index == 0 else ""), header.hardware or "-",
                         header.purpose or "-"))
    _print_plain(_aligned(("recipe", "config", "hardware", "purpose"), rows))


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it (shorter), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- options a recipe or data command declares ------------------------------------------------------------
def _split_args(args: list[str], options: type | None) -> tuple[list[str], list[str], list[str]]:
    """Command-line words -> (positionals, option `key=value`s, dotted run-config `key.sub=value`s).

    `--key value`, `--key=value`, `--flag` / `--no-flag` (bool options) are spelled as `key=value`;
    `options` (a dataclass, or None when not known yet) says which options are bools.
    """
    fields = {f.name: f for f in dataclasses.fields(options)} if options is not None else {}
    positionals, values, overrides = [], [], []
    words = list(args)
    while words:
        word = words.pop(0)
        if word.startswith("--") and len(word) > 2:
            key, has_value, value = word[2:].partition("=")
            key = key.replace("-", "_")
            if not has_value:
                bool_field = fields.get(key) or fields.get(key.removeprefix("no_"))
                if bool_field is not None and bool_field.type in (bool, "bool"):
                    value = "false" if key.startswith("no_") and key not in fields else "true"
                    key = key if key in fields else key.removeprefix("no_")
                elif options is not None and key not in fields:
                    values.append(f"{key}=")  # unknown: reported with the valid options by load_options
                    continue
                elif not words:
                    raise ConfigError(f"option --{key.replace('_', '-')}: expected a value after it")
                else:
                    value = words.pop(0)
            values.append(f"{key}={value}")
        elif _is_key_value(word):
            (overrides if "." in word.partition("=")[0] else values).append(word)
        else:
            positionals.append(word)
    return positionals, values, overrides


def _is_key_value(word: str) -> bool:
    """`limit=5` or `data.path=DIR` (a dotted key, then =), not a path that exists."""
    import re

    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=", word) is not None and not Path(word).exists()


def _aligned(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    from genflow.engine.run_table import aligned_text

    return aligned_text(headers, rows)


def _print_plain(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _key_lines(title: str, rows: list[tuple[str, str, Any, str]]) -> str:
    """One aligned line per key (key, type, default, help)."""
    return title + "\n" + _aligned(("key", "type", "default", "help"),
                                   [(key, type_name, json.dumps(default), help_text) for key, type_name, default, help_text in rows])


def _options_text(options: type, title: str) -> str:
    from genflow.config import config_keys

    return _key_lines(title, config_keys(options))


def _help(ctx: typer.Context, sections: list[str], footer: str = "") -> None:
    console.print(ctx.get_help())
    for text in sections + ([footer] if footer else []):
        console.print("\n" + text, markup=False, highlight=False, soft_wrap=True)


def _print_result(result: dict[str, Any]) -> None:
    from genflow.data import dataset_info

    for key, value in result.items():
        if key == "dataset":
            _print_info(dataset_info(value), Path(value))
        else:
            console.print(f"{key}: {value}", markup=False, highlight=False)


# --- data -----------------------------------------------------------------------------------------------
def _run_data_command(ctx: typer.Context, action: str, kind: str | None, args: list[str], wants_help: bool) -> None:
    from genflow.config import load_options
    from genflow.data.registry import DataJob, data_commands, get_data_command

    if kind is None:
        if wants_help:
            return _help(ctx, [], f"kinds: {', '.join(data_commands(action))} (`genflow data list`)")
        raise ConfigError(f"genflow data {action}: expected a kind ({', '.join(data_commands(action))})")
    command = get_data_command(action, kind)
    if wants_help:
        source = f"SOURCE: {command.source}\n" if command.source else ""
        return _help(ctx, [_options_text(command.options, f"{action} {kind}: {command.summary}")], source.rstrip())
    positionals, values, overrides = _split_args(args, command.options)
    options = load_options(command.options, values, f"data {action} {kind} option")
    source = None
    if command.source is not None:
        if len(positionals) != 1:
            raise ConfigError(f"genflow data import {kind}: expected one SOURCE ({command.source}), got {len(positionals)}")
        source = Path(positionals.pop())
    if positionals or overrides:
        raise ConfigError(f"genflow data {action} {kind}: unexpected {' '.join(positionals + overrides)!r} "
                          f"(options are key=value, see --help)")
    given = " ".join(values)
    line = f"genflow data {action} {kind}{' ' + str(source) if source else ''}{' ' + given if given else ''}"
    if "overwrite=true" not in given:
        line += " overwrite=true"
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{action} {kind}", total=None)
        result = command.run(options, DataJob(command=line, source=source,
                                              progress=lambda done, total: bar.update(task, completed=done, total=total)))
    _print_result(result)


@data_app.command("make", context_settings=FREE_OPTIONS)
def data_make(ctx: typer.Context,
              kind: Optional[str] = typer.Argument(None, help="What to make (see `genflow data list`)."),
              args: Optional[list[str]] = typer.Argument(None, help="Options key=value (or --key value)."),
              wants_help: bool = typer.Option(False, "--help", "-h", help="Show this message and the kind's options.")) -> None:
    """Make a dataset: `genflow data make KIND key=value ...` (`genflow data make KIND --help` lists the options)."""
    _run_data_command(ctx, "make", kind, list(args or []), wants_help)


@data_app.command("import", context_settings=FREE_OPTIONS)
def data_import(ctx: typer.Context,
                kind: Optional[str] = typer.Argument(None, help="What the source holds (see `genflow data list`)."),
                args: Optional[list[str]] = typer.Argument(None, help="SOURCE, then options key=value (or --key value)."),
                wants_help: bool = typer.Option(False, "--help", "-h", help="Show this message and the kind's options.")) -> None:
    """Convert files into shards: `genflow data import KIND SOURCE key=value ...`; bad files are reported and skipped."""
    _run_data_command(ctx, "import", kind, list(args or []), wants_help)


@data_app.command("list")
def data_list() -> None:
    """The installed dataset makers and importers."""
    from genflow.data.registry import data_commands

    rows = [(f"genflow data {action} {name}" + (" SOURCE" if command.source else ""), command.summary)
            for action in ("make", "import") for name, command in data_commands(action).items()]
    _print_plain(_aligned(("command", "summary"), rows))


# Names of the earlier per-kind commands, kept working: `genflow data make-digit4 --out D` is `data make digit4 out=D`.
DATA_ALIASES = {"make-digit4": ("make", "digit4"), "make-mnist-points": ("make", "mnist-points"),
                "make-namo": ("make", "namo"), "make-moving-mnist": ("make", "moving-mnist"),
                "make-mnist-images": ("make", "mnist-images"), "make-hands": ("make", "hands"),
                "import-moving-mnist": ("import", "moving-mnist"), "import-npz": ("import", None)}


def _alias_command(alias: str, action: str, kind: str | None):
    def run(ctx: typer.Context, args: Optional[list[str]] = typer.Argument(None),
            wants_help: bool = typer.Option(False, "--help", "-h")) -> None:
        words, chosen = list(args or []), kind
        if chosen is None:  # import-npz SRC --kind namo
            for i, word in enumerate(words):
                if word == "--kind" and i + 1 < len(words):
                    chosen = words[i + 1]
                    del words[i : i + 2]
                    break
                if word.startswith("--kind="):
                    chosen = word.partition("=")[2]
                    del words[i]
                    break
            if chosen is None and not wants_help:
                raise ConfigError(f"genflow data {alias}: expected --kind (namo or hands)")
        _run_data_command(ctx, action, chosen, words, wants_help)

    run.__doc__ = f"Same as `genflow data {action} {kind or 'KIND'}`."
    data_app.command(alias, context_settings=FREE_OPTIONS, hidden=True)(run)


for _alias, (_action, _kind) in DATA_ALIASES.items():
    _alias_command(_alias, _action, _kind)


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
            console.print(Text.assemble((key, "bold"), f": {info[key]}"))


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
            err_console.print(Text.assemble(("✗", "red"), f" {problem}"))
        raise GenflowError(f"{path}: {len(problems)} problem(s) found")
    console.print(Text.assemble(("✓", "green"), f" {path}: all shards match the manifest"))


# --- runs -----------------------------------------------------------------------------------------------
@runs_app.command("import", context_settings=FREE_OPTIONS)
def runs_import(ctx: typer.Context,
                kind: Optional[str] = typer.Argument(None, help="Which codebase trained the run (e.g. sage-learning)."),
                args: Optional[list[str]] = typer.Argument(None, help="SOURCE, then options key=value (or --key value)."),
                wants_help: bool = typer.Option(False, "--help", "-h", help="Show this message and the kind's options.")) -> None:
    """Make a genflow run of a run another codebase trained: `genflow runs import KIND SOURCE key=value ...`."""
    from genflow.config import load_options
    from genflow.engine.run_import import get_run_importer, run_importers

    if kind is None:
        if wants_help:
            return _help(ctx, [], f"kinds: {', '.join(run_importers()) or 'none installed'}")
        raise ConfigError(f"genflow runs import: expected a kind ({', '.join(run_importers())})")
    importer = get_run_importer(kind)
    if wants_help:
        return _help(ctx, [_options_text(importer.options, f"runs import {kind}: {importer.summary}")], f"SOURCE: {importer.source}")
    positionals, values, overrides = _split_args(list(args or []), importer.options)
    options = load_options(importer.options, values, f"runs import {kind} option")
    if len(positionals) != 1 or overrides:
        raise ConfigError(f"genflow runs import {kind}: expected one SOURCE ({importer.source}) and options key=value, "
                          f"got {' '.join(positionals + overrides) or 'nothing'}")
    _print_result(importer.run(options, Path(positionals[0])))


_RUNS_FORMAT = typer.Option("text", "--format", help="text | markdown | json (every field, the changed keys in full).")
_RUNS_SORT = typer.Option(None, "--sort", help="Sort by a column (recipe, name, status, changed, epochs, steps, best, "
                          "test, wall, device) or a test metric test.METRIC; numbers as numbers, runs without a value last.")
_RUNS_DESC = typer.Option(False, "--desc/--asc", help="Sort descending (default ascending).")
_RUNS_METRIC = typer.Option(None, "--metric", help="A test metric to show in the test column (repeat for more); the "
                            "column otherwise names the test results found in RUN/eval/*.json.")


@runs_app.command("ls")
def runs_ls(directory: Path = typer.Argument(Path("runs"), metavar="DIR", help="Runs root (runs/, runs/<recipe>, a sweep) "
                                             "or one run."),
            fmt: str = _RUNS_FORMAT, sort: Optional[str] = _RUNS_SORT, descending: bool = _RUNS_DESC,
            metric: Optional[list[str]] = _RUNS_METRIC) -> None:
    """List the runs under DIR (default runs/), one line each: status, changed keys, epochs, steps, best, test, wall, device.

    Example: genflow runs ls runs/dtm --sort best --desc
    """
    _print_runs([directory], fmt=fmt, sort=sort, descending=descending, metrics=list(metric or []), empty_ok=True)


@runs_app.command("compare")
def runs_compare(runs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories, or directories holding "
                                                   "runs (a sweep)."),
                 fmt: str = _RUNS_FORMAT, sort: Optional[str] = _RUNS_SORT, descending: bool = _RUNS_DESC,
                 metric: Optional[list[str]] = _RUNS_METRIC) -> None:
    """Compare runs in the `runs ls` table, in the order given (or --sort).

    Example: genflow runs compare runs/dtm/a runs/dtm/b --format markdown
    """
    _print_runs(runs, fmt=fmt, sort=sort, descending=descending, metrics=list(metric or []), empty_ok=False)


def _print_runs(paths: list[Path], *, fmt: str, sort: str | None, descending: bool, metrics: list[str], empty_ok: bool) -> None:
    """The table on stdout; runs that cannot be read, and what could not be read of a run, on stderr."""
    from genflow.engine.run_table import check_table_options, collect_summaries, runs_table

    check_table_options(fmt=fmt, sort=sort)
    summaries, skipped = collect_summaries(paths, empty_ok=empty_ok)
    noted: dict[str, list[str]] = {}  # a note -> the runs it is about (an uninstalled recipe: many runs, one line)
    for summary in summaries:
        for note in summary["warnings"]:
            noted.setdefault(note, []).append(summary["path"])
    for note, where in noted.items():
        runs = where[0] if len(where) == 1 else f"{len(where)} runs ({', '.join(where[:3])}{', ...' if len(where) > 3 else ''})"
        err_console.print(f"warning: {runs}: {note}")
    if skipped:
        err_console.print(f"warning: {len(skipped)} run dir(s) left out, they cannot be read: {'; '.join(skipped)}")
    if not summaries and fmt != "json":
        err_console.print(f"no runs under {', '.join(str(p) for p in paths)}")
        return
    sys.stdout.write(runs_table(summaries, fmt=fmt, sort=sort, descending=descending, metrics=metrics) + "\n")


# --- train ----------------------------------------------------------------------------------------------
@app.command("train")
def train_command(
    recipe: str = typer.Argument(..., help="Recipe name (see `genflow recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key.sub=value."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file, or the name of one of the recipe's "
                                          "configs (`genflow recipes` lists them; default: its first)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: the start time)."),
    gpus: int = typer.Option(1, min=1, help="Number of processes: one per GPU, or CPU processes over gloo without CUDA."),
    precision: Optional[str] = typer.Option(None, help="auto (default: bf16 where the GPU / CPU has it natively, else fp32) | "
                                            "no | 32 | fp32 | bf16 | bf16-mixed | fp16 | 16-mixed (sets train.precision)."),
    resume: Optional[str] = typer.Option(None, help="Run dir (or checkpoint file) to continue from, or 'auto': the latest run; "
                                         "with --name, that run if it has a checkpoint, else a fresh one (requeued jobs)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Root of run directories."),
    progress: bool = typer.Option(True, help="Show the progress bar on a terminal (plain progress lines are printed "
                                  "when stdout is not one, and with --no-progress)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config (YAML) and exit; nothing is written."),
    nnodes: int = typer.Option(1, min=1, help="Machines in the job; each runs this command with its own --node-rank."),
    node_rank: int = typer.Option(0, min=0, help="This machine's place among the --nnodes (0: the one at --master-addr)."),
    master_addr: str = typer.Option("127.0.0.1", help="Address of node 0, reachable from every node (with --nnodes > 1)."),
    master_port: int = typer.Option(29500, help="Free TCP port on node 0 for the rendezvous (with --nnodes > 1)."),
    profile: Optional[str] = typer.Option(None, "--profile", metavar="START:END",
                                          help="torch.profiler over optimiser steps START..END-1 counted from 0 (10:15: "
                                          "the steps logged as 11..15) into RUN/profile/: trace.json (ui.perfetto.dev) and "
                                          "ops.txt (time per op); main process only (sets train.profile)."),
) -> None:
    """Train a recipe into runs/<recipe>/<name>/ (resumable, multi-process with --gpus N).
    `genflow config RECIPE --keys` lists every config key."""
    from genflow.engine.launch import NodeSpec, is_launched_worker, launch_processes
    from genflow.engine.run_setup import prepare_training
    from genflow.engine.trainer import PREEMPTED_EXIT_CODE, TrainingPreempted, train

    overrides, gpus = _source_trainer_overrides(list(overrides or []), gpus)
    if precision is not None:
        overrides.append(f"train.precision={precision}")
    if profile is not None:  # quoted: YAML would read 10:15 as a number
        overrides.append(f"train.profile={json.dumps(profile)}")
    if print_config:
        plan = prepare_training(recipe, config_path=config, overrides=overrides, name=name, resume=resume,
                                runs_root=runs_dir, create=False)
        return _print_yaml(plan.recipe.config)
    nodes = NodeSpec(nnodes, node_rank, master_addr, master_port)
    launch = (gpus > 1 or nnodes > 1) and not is_launched_worker()
    plan = prepare_training(recipe, config_path=config, overrides=overrides, name=name, resume=resume,
                            runs_root=runs_dir, create=not launch)
    if launch:
        # plan.overrides: without ckpt_path= / resume_from_checkpoint=, which became --resume (given once, not twice).
        # No --name given: the processes take rank 0's (every node would pick another start time).
        where = ["--resume", str(plan.resume_checkpoint)] if plan.resume_checkpoint else (["--name", name] if name else [])
        args = [*(["--debug"] if _state["debug"] else []), "train", recipe, *plan.overrides, "--runs-dir", str(runs_dir),
                *where, *(["--config", str(config)] if config else []), *([] if progress else ["--no-progress"])]
        node = f" on node {node_rank} of {nnodes}" if nnodes > 1 else ""
        console.print(f"launching {gpus} process(es){node} -> {plan.run_dir if where else runs_dir / plan.recipe.name}")
        code = launch_processes(gpus, args, nodes, tuple(plan.recipe.config.train.preempt_signals))
        if code == PREEMPTED_EXIT_CODE:
            raise TrainingPreempted("preempted: the processes stopped after a step with last.pt written; the same command "
                                    "with --resume auto --name NAME continues")
        if code:
            raise GenflowError(f"distributed training failed (exit code {code}); see the messages above", exit_code=code)
        return
    result = train(plan.recipe, plan.run_dir, resume_from=plan.resume_checkpoint, show_progress=progress,
                   discard_failed_start=plan.created_run_dir)
    if plan.is_main:
        best = result.best
        best_text = f"best {best['metric']} {best['value']:.4f} (epoch {best['epoch']})" if best.get("value") is not None else ""
        seen = max(result.samples_seen, 1)
        memory = f", peak memory {result.peak_memory_mib:.0f} MiB" if result.peak_memory_mib else ""
        console.print(Text.assemble(("done", "green"), f": {result.steps} steps in {result.seconds:.0f} s ({result.samples_seen} samples, "
                      f"{result.seconds / seen * 1000:.1f} ms per sample{memory})  {best_text}\nrun dir: {result.run_dir}"))


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


# --- sweep ---------------------------------------------------------------------------------------------
@app.command("sweep")
def sweep_command(
    recipe: str = typer.Argument(..., help="Recipe name (see `genflow recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=choice(a,b,...) or key=range(start,stop[,step]) "
                                                    "to sweep (quote them in a shell); key=value for every trial."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file, or the name of one of the recipe's configs."),
    name: Optional[str] = typer.Option(None, help="Sweep name: its directory RUNS_DIR/sweeps/NAME (default: recipe and "
                                       "start time). The same command with the same --name continues a stopped sweep."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Run every point with N seeds: train.seed = the config's, +1, ..."),
    samples: Optional[int] = typer.Option(None, min=1, help="Run N points drawn at random from the grid (without repeats)."),
    sample_seed: int = typer.Option(0, help="Seed of the --samples draw."),
    parallel: int = typer.Option(1, min=1, help="Trials at a time; they split the cores (and GPUs) between them."),
    gpus: int = typer.Option(1, min=1, help="Processes per trial (`genflow train --gpus N`): GPUs, or CPU processes without CUDA."),
    runs_dir: Path = typer.Option(Path("runs"), help="Root of run directories; the sweep goes to RUNS_DIR/sweeps/NAME."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the trials and exit; nothing is written."),
) -> None:
    """Train a grid of configs, each trial its own `genflow train` process, and tabulate their best metrics.
    Example: genflow sweep digit4 'train.lr=choice(1e-3,3e-3)' --seeds 2 --parallel 2"""
    from genflow.config import load_config
    from genflow.engine.recipe import get_recipe
    from genflow.engine.run_dir import check_run_name, default_run_name
    from genflow.engine.sweep import SweepPlan, parse_sweep_words, run_sweep, sweep_summary

    cls = get_recipe(recipe)
    axes, fixed = parse_sweep_words(list(overrides or []))
    config_file = cls.config_file(config)
    base = load_config(cls.config_class, config_file, fixed)
    plan = SweepPlan(recipe=cls.name, axes=tuple(axes), fixed=tuple(fixed), config=config, seeds=seeds,
                     first_seed=base.train.seed, samples=samples, sample_seed=sample_seed, gpus=gpus)
    trials = plan.trials()
    for trial in trials:  # every trial's config is valid before the first starts
        load_config(cls.config_class, config_file, trial.overrides)
    sweep_dir = runs_dir / "sweeps" / check_run_name(name or f"{cls.name}-{default_run_name()}")
    if dry_run:
        _print_plain(_aligned(("trial", "overrides"), [(t.name, " ".join(t.overrides)) for t in trials]))
        return
    import torch

    console.print(f"sweep {sweep_dir}: {len(trials)} trials, {parallel} at a time (continue it with the same command "
                  f"and --name {sweep_dir.name})")
    done = run_sweep(plan, sweep_dir=sweep_dir, parallel=parallel, cuda_devices=torch.cuda.device_count(),
                     report=lambda line: console.print(line))
    summary = sweep_summary(sweep_dir, done, recipe=cls.name)
    _print_plain(summary["text"])
    failed = [t.name for t in done if t.status != "done"]
    console.print(f"summary: {_display_path(sweep_dir / 'summary.md')}, {_display_path(sweep_dir / 'summary.json')}")
    if failed:
        raise GenflowError(f"{len(failed)} of {len(done)} trials did not finish ({', '.join(failed)}); their logs are in "
                           f"{_display_path(sweep_dir / 'logs')}; the same command retries them")


# --- config --------------------------------------------------------------------------------------------
@app.command("config")
def config_command(
    recipe: str = typer.Argument(..., help="Recipe name (see `genflow recipes`)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key.sub=value."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config file, or the name of one of the recipe's "
                                          "configs (`genflow recipes` lists them; default: its first)."),
    keys: bool = typer.Option(False, "--keys", help="List every key with its type, default (after the YAML and "
                              "overrides) and help, instead of the YAML."),
) -> None:
    """Print a recipe's resolved config as YAML (a file `genflow train RECIPE --config FILE` takes), or its keys.
    `genflow config RECIPE --config NAME > mine.yaml` copies a config out to edit: every key, under its header."""
    from genflow.config import config_keys, config_to_dict, load_config
    from genflow.engine.recipe import get_recipe

    cls = get_recipe(recipe)
    config = cls.config_file(config)
    resolved = load_config(cls.config_class, config, list(overrides or []))
    if not keys:
        from genflow.engine.card import config_header

        header = config_header(config)
        sys.stdout.write(f"# hardware: {header.hardware or '-'}\n# purpose: {header.purpose or '-'}\n"
                         f"# every key of {cls.name}'s config {config.stem}{' with ' + ' '.join(overrides) if overrides else ''}"
                         f" (genflow config {cls.name} --keys explains them); train it with:\n"
                         f"#   genflow train {cls.name} --config THIS_FILE\n")
        return _print_yaml(resolved)
    values = config_to_dict(resolved)
    rows = []
    for key, type_name, _, help_text in config_keys(cls.config_class):
        value: Any = values
        for part in key.split("."):
            value = value[part]
        rows.append((key, type_name, value, help_text))
    console.print(_key_lines(f"{cls.name} config keys (default: after {_display_path(config)} "
                             f"and the overrides; change one with key.sub=value)", rows),
                  markup=False, highlight=False, soft_wrap=True)


def _print_yaml(config: Any) -> None:
    import yaml

    from genflow.config import config_to_dict

    class Dumper(yaml.SafeDumper):  # sections as blocks, lists on one line
        pass

    Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))
    sys.stdout.write(yaml.dump(config_to_dict(config), Dumper=Dumper, sort_keys=False))


# --- sample / eval / export ----------------------------------------------------------------------------
def _recipe_of(word: str) -> Any:
    """The recipe class of a run directory or of a recipe name (for --help)."""
    from genflow.engine.recipe import get_recipe
    from genflow.engine.run_dir import read_run_config

    if Path(word).is_dir():
        return get_recipe(read_run_config(Path(word))["recipe"])
    return get_recipe(word)


@app.command("sample", context_settings=FREE_OPTIONS)
def sample_command(
    ctx: typer.Context,
    args: Optional[list[str]] = typer.Argument(None, help="RUN_DIR, then the recipe's sample options key=value (or "
                                               "--key value) and run config changes data.*|eval.*|sampling.*=value "
                                               "(e.g. data.path=DIR for moved data)."),
    checkpoint: str = typer.Option("best", help="best | last | epoch_XXXX."),
    wants_help: bool = typer.Option(False, "--help", "-h", help="Show this message; with a run dir or recipe, its sample options."),
) -> None:
    """Generate samples from a trained run: `genflow sample RUN n=16 seed=1` (`genflow sample RUN --help` lists the options)."""
    from genflow.engine.run_dir import load_run

    words = list(args or [])
    if wants_help:
        sections = []
        if words:
            cls = _recipe_of(words[0])
            sections.append(_options_text(cls.sample_options, f"{cls.name} sample options (key=value or --key value)"))
        return _help(ctx, sections, "" if words else "give a run dir or recipe name for its options: genflow sample RUN --help")
    if not words or words[0].startswith("-") or _is_key_value(words[0]):
        raise ConfigError("genflow sample: expected a run directory first (genflow sample RUN key=value ...)")
    run_dir, rest = Path(words[0]), words[1:]
    positionals, values, overrides = _split_args(rest, _recipe_of(str(run_dir)).sample_options if run_dir.is_dir() else None)
    run = load_run(run_dir, checkpoint, device=_device(), overrides=overrides)
    options = run.recipe.options("sample", values)
    if positionals:
        raise ConfigError(f"genflow sample: unexpected {' '.join(positionals)!r} (options are key=value, see --help)")
    result = run.recipe.sample(run.model, run.run_dir, _device(), options)
    for key, value in result.items():
        console.print(f"{key}: {value}", markup=False, highlight=False)


@app.command("eval", context_settings=FREE_OPTIONS)
def eval_command(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="The recipe's evaluation (chamfer, namo, video, dtm, hands, ...), "
                                         "or compare (samplers of several runs)."),
    args: Optional[list[str]] = typer.Argument(None, help="RUN_DIR (several for compare), then the evaluation's options "
                                               "key=value (or --key value) and run config changes data.*|eval.*=value."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    checkpoint: str = typer.Option("best", help="best | last | epoch_XXXX."),
    out: Optional[Path] = typer.Option(None, help="compare: output directory (default runs/compare/<time>)."),
    wants_help: bool = typer.Option(False, "--help", "-h", help="Show this message; with a run dir or recipe, the evaluation's options."),
) -> None:
    """Evaluate a trained run (`genflow eval chamfer RUN split=val`), or compare samplers of several runs by
    quality vs network evaluations (`genflow eval compare RUN_A RUN_B`). Reported figures: split=test."""
    from genflow.engine.run_dir import load_run

    words = list(args or [])
    if wants_help:
        return _help(ctx, _eval_options_texts(name, words[:1]),
                     "" if words else "give a run dir or recipe name for its options: genflow eval NAME RUN --help")
    if name is None:
        raise ConfigError("genflow eval: expected an evaluation name and a run directory (genflow eval NAME RUN)")
    run_dirs = []
    while words and not words[0].startswith("-") and not _is_key_value(words[0]):
        run_dirs.append(Path(words.pop(0)))
    if not run_dirs:
        raise ConfigError(f"eval {name}: expected a run directory")
    recipe_cls = _recipe_of(str(run_dirs[0])) if run_dirs[0].is_dir() else None
    main_eval = name if name != "compare" else (next(iter(recipe_cls.evaluations), None) if recipe_cls else None)
    options_cls = recipe_cls.evaluations.get(main_eval, (None,))[0] if recipe_cls else None
    positionals, values, overrides = _split_args(words, options_cls)
    if positionals:
        raise ConfigError(f"eval {name}: unexpected {' '.join(positionals)!r} after the options (run dirs come first)")
    if name == "compare":
        from genflow.engine.compare import compare_runs

        if overrides:
            raise GenflowError(f"eval compare: run config changes ({', '.join(overrides)}) apply to one run; "
                               "evaluate that run with `genflow eval NAME RUN key=value`")
        result = compare_runs(run_dirs, out, values, checkpoint=checkpoint, device=_device())
        if as_json:
            sys.stdout.write(json.dumps(result["rows"]) + "\n")
            return
        console.print(result["table"])
        console.print(f"wrote {result['json']}  {result['markdown']}  {result['plot']}", markup=False, highlight=False)
        return
    if len(run_dirs) != 1:
        raise GenflowError(f"eval {name}: expected one run directory, got {len(run_dirs)} (only `compare` takes several)")
    run_dir = run_dirs[0]
    run = load_run(run_dir, checkpoint, device=_device(), overrides=overrides)
    options = run.recipe.options(name, values)
    result = run.recipe.run_eval(name, run.model, run.run_dir, _device(), options)
    result = {"run_dir": str(run_dir), "checkpoint": run.checkpoint.name, **result}
    saved = _save_eval_result(run_dir, name, result, options)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table("metric", "value", title=f"{name} — {run_dir}")
    for key, value in result.items():
        if isinstance(value, dict):
            continue  # nested per-horizon numbers: in --json and the files the recipe wrote
        table.add_row(key, f"{value:.5f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"saved {_display_path(saved)}")


def _save_eval_result(run_dir: Path, name: str, result: dict[str, Any], options: Any) -> Path:
    """RUN/eval/NAME-SPLIT-CHECKPOINT.json: the result with its options, for `genflow runs ls` and the model
    card (a later evaluation of the same split and checkpoint replaces it)."""
    split = result.get("split") or getattr(options, "split", None) or "all"
    path = run_dir / "eval" / f"{name}-{split}-{Path(result['checkpoint']).stem}.json"
    path.parent.mkdir(exist_ok=True)
    doc = {**result, "split": split, "evaluation": name, "options": dataclasses.asdict(options)}
    from genflow.engine.checkpoint import atomic_write_text

    return atomic_write_text(path, json.dumps(doc, default=str, indent=1) + "\n")


def _eval_options_texts(name: str | None, words: list[str]) -> list[str]:
    """--help of `genflow eval`: the options of evaluation `name` of the given run / recipe, or of every recipe that has it."""
    from genflow.engine.recipe import available_recipes

    classes = [_recipe_of(words[0])] if words else list(available_recipes().values())
    texts, seen = [], set()
    for cls in classes:
        names = [name] if name in cls.evaluations else ([] if words and name not in (None, "compare") else list(cls.evaluations))
        if name == "compare":
            names = list(cls.evaluations)[:1] if cls.compare_metrics else []
        for eval_name in names:
            options = cls.evaluations[eval_name][0]
            if (eval_name, options) in seen:
                continue
            seen.add((eval_name, options))
            texts.append(_options_text(options, f"eval {eval_name} ({cls.name}) options (key=value or --key value)"))
    if words and name not in (None, "compare") and not texts:
        cls = classes[0]
        raise GenflowError(f"recipe '{cls.name}' has no '{name}' evaluation (it has: {', '.join(cls.evaluations) or 'none'})")
    return texts


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Run config changes data.*=value, for a recipe whose "
                                                    "model shape is read from its dataset (dtm) when the data moved."),
    format: str = typer.Option("safetensors", "--format", help="safetensors | onnx."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default RUN_DIR/export)."),
    checkpoint: Optional[str] = typer.Option(None, help="best (default) | last | epoch_XXXX | top_epoch_XXXX | average_best_K."),
    average: Optional[str] = typer.Option(None, "--average", help="best:K | last:K: export the mean weights of the K best "
                                          "(train.keep_top_k) or the K newest epoch_XXXX checkpoints, saved first as "
                                          "checkpoints/average_best_K.pt / average_last_K.pt."),
) -> None:
    """Export a trained model: weights as safetensors + config, or ONNX graphs checked against torch; a model
    card README.md beside them."""
    from genflow.engine.checkpoint import write_averaged_checkpoint
    from genflow.engine.run_dir import load_run, read_run_config
    from genflow.export import export_onnx, export_safetensors, write_model_card

    if format not in ("safetensors", "onnx"):
        raise GenflowError(f"--format {format!r}: expected safetensors or onnx")
    if average is not None:
        if checkpoint is not None:
            raise ConfigError(f"--average {average} and --checkpoint {checkpoint} both given: the average is the checkpoint "
                              f"exported; pass one")
        read_run_config(run_dir)  # a run dir, before anything is written into it
        averaged = write_averaged_checkpoint(run_dir / "checkpoints", average)
        checkpoint = averaged.stem
        console.print(f"wrote {averaged}  mean weights of {average}", markup=False, highlight=False)
    run = load_run(run_dir, checkpoint or "best", need_data=False, overrides=list(overrides or []))
    out = out or run_dir / "export"
    written = export_safetensors(run, out) if format == "safetensors" else export_onnx(run, out)
    written[write_model_card(run, out, files=list(written), weights_format=format)] = "model card"
    for path, detail in written.items():
        console.print(f"wrote {path}  {detail}")


def _device() -> "Any":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _one_line(exc: GenflowError) -> str:
    """The user's message; an error re-raised from a DataLoader worker carries the worker's traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def _os_error_line(exc: OSError) -> str:
    """`PATH: reason` of an OSError (h5py's and zipfile's too), with what to do about a full disk."""
    import errno

    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc).strip() or type(exc).__name__
    hint = "; free some space or write elsewhere (--runs-dir, out=)" if exc.errno == errno.ENOSPC else ""
    return f"{paths}: {reason}{hint}" if paths else f"{reason}{hint} ({type(exc).__name__})"


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI, turning user errors into one line on stderr and an exit code."""
    try:
        result = app(args=argv, prog_name="genflow", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except GenflowError as exc:
        if _state["debug"]:
            raise
        err_console.print(Text.assemble(("error:", "red"), " ", _one_line(exc)))
        return exc.exit_code
    except OSError as exc:  # a path or the disk the user gave us: no such file, not a directory, disk full, no permission
        if _state["debug"]:
            raise
        err_console.print(Text.assemble(("error:", "red"), " ", _os_error_line(exc)))
        return 2
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        exc.show()
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
