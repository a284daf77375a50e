"""`genflow sweep RECIPE`: a grid of `genflow train` runs (or random draws from it), each its own process.

The grid is spelled with Hydra's sweep grammar, so `key=a,b` keeps meaning the one string "a,b" and
`key=[a,b]` one list, as in `genflow train`:

    genflow sweep digit4 'train.lr=choice(1e-3,3e-3)' 'model.widths=choice([32,64],[64,128])' \
        'train.epochs=range(2,6,2)' data.path=datasets/digit4 --seeds 2 --parallel 2

A sweep lives in one directory (`runs/sweeps/NAME`), which is a runs root: trial `T` trains into
`NAME/<recipe>/T` with `genflow train --resume auto --name T`, so a trial that was stopped continues from its
`last.pt`. `sweep.json` holds the plan and each trial's state, rewritten atomically after every change;
the same command with the same `--name` continues a sweep that was killed, skipping finished trials.
Each trial is a separate process (a crash, a leak or a multi-process `--gpus N` trial cannot disturb
the next), with its own log in `NAME/logs/`. `--parallel K` runs K trials at a time, each pinned to its
share of the cores (and, on GPUs, to its own devices). When the sweep is stopped (Ctrl-C, SIGTERM), its
trials write `last.pt` and stop; if the sweep process is killed outright, Linux sends its trials SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from genflow.engine.checkpoint import atomic_write_text
from genflow.errors import PREEMPTED_EXIT_CODE, ConfigError, GenflowError

__all__ = ["Axis", "Trial", "SweepPlan", "SweepStopped", "parse_sweep_words", "plan_trials", "core_slots", "run_sweep", "sweep_summary",
           "SWEEP_FILE"]

SWEEP_FILE = "sweep.json"
_GRID = re.compile(r"^(choice|range)\((.*)\)$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept key and its values, each the text a `key=value` override takes (`[32,64]`, `1e-3`)."""

    key: str
    values: tuple[str, ...]


@dataclasses.dataclass
class Trial:
    """One `genflow train` run of the sweep."""

    name: str  # the run's name: its directory under SWEEP/<recipe>/
    point: dict[str, str]  # swept key -> value text
    seed: int | None  # train.seed set by --seeds (None: the config's)
    overrides: list[str]  # everything passed to `genflow train`: fixed, then swept, then the seed
    status: str = "pending"  # pending | running | done | failed | stopped
    exit_code: int | None = None
    seconds: float = 0.0  # wall time of its processes, over the starts whose end the sweep saw
    starts: int = 0


def _split_top_level(text: str) -> list[str]:
    """`[32,64],[64,128]` -> ['[32,64]', '[64,128]']: commas inside brackets, braces or quotes stay."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def _range_values(key: str, args: list[str]) -> tuple[str, ...]:
    """Hydra's `range(start, stop[, step])`: stop excluded; integers, or floats if any bound is one."""
    try:
        numbers = [int(a) if re.fullmatch(r"[+-]?\d+", a) else float(a) for a in args]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or len(numbers) != len(args) or (len(numbers) == 3 and numbers[2] == 0):
        raise ConfigError(f"{key}=range({', '.join(args)}): expected range(start, stop) or range(start, stop, step) "
                          "with numbers and a non-zero step")
    start, stop, step = (*numbers, 1) if len(numbers) == 2 else numbers
    count = max(0, math.ceil((stop - start) / step))
    values = [start + i * step for i in range(count)]
    if isinstance(step, float) or isinstance(start, float):
        values = [round(v, 12) for v in values]  # 0.1 + 2 * 0.1 prints as 0.3
    if not values:
        raise ConfigError(f"{key}=range({', '.join(args)}): the range is empty")
    return tuple(repr(v) if isinstance(v, float) else str(v) for v in values)


def parse_sweep_words(words: list[str]) -> tuple[list[Axis], list[str]]:
    """`key=choice(a,b)` / `key=range(a,b[,step])` -> axes; any other `key=value` -> a fixed override.

    Raises:
        ConfigError: a key swept twice, an empty choice, or `key=a,b`: in a sweep that is a typo for
            `choice(a,b)` far more often than the string "a,b" (quote the value to mean the string).
    """
    axes: list[Axis] = []
    fixed: list[str] = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigError(f"{word!r}: expected key.sub=value, key=choice(a,b,...) or key=range(start,stop[,step])")
        grid = _GRID.match(value.strip())
        if grid is None:
            if "," in value and not value.strip().startswith(("[", "{", "'", '"')):
                raise ConfigError(f"{word}: to sweep, write {key}=choice({value}); for the one string, quote it: "
                                  f"{key}='\"{value}\"' (a list is {key}=[{value}])")
            fixed.append(word)
            continue
        kind, args = grid.group(1), [a for a in _split_top_level(grid.group(2))]
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"{key}: swept twice; give one choice(...) with every value")
        if kind == "choice":
            if not any(args) or any(a == "" for a in args):
                raise ConfigError(f"{word}: expected choice(a, b, ...) with no empty value")
            values = tuple(args)
        else:
            values = _range_values(key, args)
        if len(set(values)) != len(values):
            raise ConfigError(f"{word}: a value is repeated")
        axes.append(Axis(key, values))
    swept = {axis.key for axis in axes}
    for word in fixed:
        if word.partition("=")[0] in swept:
            raise ConfigError(f"{word}: {word.partition('=')[0]} is also swept; give it once")
    return axes, fixed


def _slug(key: str, value: str) -> str:
    """`train.lr`, `0.001` -> `lr0.001`; `model.widths`, `[32, 64]` -> `widths32_64` (a directory name)."""
    text = key.rsplit(".", 1)[-1] + re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_")
    return text[:40]


def plan_trials(axes: list[Axis], fixed: list[str], *, seeds: int | None = None, first_seed: int = 42,
                samples: int | None = None, sample_seed: int = 0) -> list[Trial]:
    """Every grid point (or `samples` of them drawn at random without repeats, with `sample_seed`), each
    run with train.seed = first_seed, first_seed + 1, ... when `seeds` is given; trials named in order.

    Raises:
        ConfigError: `--seeds` while train.seed is swept.
    """
    if seeds is not None and any(axis.key == "train.seed" for axis in axes):
        raise ConfigError("--seeds with train.seed swept: sweep the seeds one way (drop --seeds, or the train.seed choice)")
    points: list[dict[str, str]] = [{}]
    for axis in axes:
        points = [{**point, axis.key: value} for point in points for value in axis.values]
    if samples is not None and samples < len(points):
        chosen = sorted(random.Random(sample_seed).sample(range(len(points)), samples))
        points = [points[i] for i in chosen]
    trials: list[Trial] = []
    seed_list: list[int | None] = [first_seed + i for i in range(seeds)] if seeds is not None else [None]
    for point in points:
        for seed in seed_list:
            index = len(trials)
            parts = [f"{index:03d}", *(_slug(k, v) for k, v in point.items()), *([f"s{seed}"] if seed is not None else [])]
            overrides = [*fixed, *(f"{k}={v}" for k, v in point.items()), *([f"train.seed={seed}"] if seed is not None else [])]
            trials.append(Trial(name="-".join(parts), point=dict(point), seed=seed, overrides=overrides))
    return trials


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What makes two sweep commands the same sweep (`--parallel` may change between starts)."""

    recipe: str  # the recipe's own name (trials train into SWEEP/<recipe>/)
    axes: tuple[Axis, ...]
    fixed: tuple[str, ...]
    config: str | None = None  # --config as given: a file or a config name of the recipe
    seeds: int | None = None
    first_seed: int = 42
    samples: int | None = None
    sample_seed: int = 0
    gpus: int = 1  # processes per trial

    def trials(self) -> list[Trial]:
        return plan_trials(list(self.axes), list(self.fixed), seeds=self.seeds, first_seed=self.first_seed,
                           samples=self.samples, sample_seed=self.sample_seed)

    def to_doc(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["axes"] = {axis.key: list(axis.values) for axis in self.axes}
        doc["fixed"] = list(self.fixed)
        return doc


def core_slots(parallel: int, *, cores: list[int] | None = None) -> list[list[int]]:
    """The cores each of `parallel` trial slots may use: the usable cores split evenly (the remainder to
    the first slots); with more slots than cores, slots share cores round-robin."""
    if cores is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if parallel >= len(cores):
        return [[cores[i % len(cores)]] for i in range(parallel)]
    share, extra = divmod(len(cores), parallel)
    slots, start = [], 0
    for i in range(parallel):
        size = share + (1 if i < extra else 0)
        slots.append(cores[start:start + size])
        start += size
    return slots


# --- state on disk ---------------------------------------------------------------------------------------
def _load_or_start(sweep_dir: Path, plan: SweepPlan) -> tuple[list[Trial], bool]:
    """The trials of `sweep_dir`'s sweep.json if it holds this plan (a continued sweep), else the plan's."""
    path = sweep_dir / SWEEP_FILE
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            saved_plan, saved = doc["plan"], [Trial(**t) for t in doc["trials"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise GenflowError(f"{path}: not a sweep file genflow can read ({exc}); move it away or pick another --name")
        if saved_plan != plan.to_doc():
            changed = sorted(k for k, v in plan.to_doc().items() if v != saved_plan.get(k))
            raise ConfigError(f"{sweep_dir}: a sweep with other settings ({', '.join(changed)}) is there; pick another "
                              f"--name, or give the same arguments to continue it")
        return saved, True
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return plan.trials(), False


# --- running -------------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the sweep process dies (Linux), so a killed sweep's trials
    write last.pt and stop instead of running on unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _trial_command(plan: SweepPlan, trial: Trial, *, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "genflow.cli", "train", plan.recipe, *trial.overrides, "--name", trial.name,
            "--runs-dir", str(sweep_dir), "--resume", "auto", "--no-progress",
            *(["--config", plan.config] if plan.config else []), *(["--gpus", str(plan.gpus)] if plan.gpus > 1 else [])]


def run_sweep(plan: SweepPlan, *, sweep_dir: Path, parallel: int = 1, cuda_devices: int = 0,
              report: Callable[[str], None] = print) -> list[Trial]:
    """Run (or continue) `plan` in `sweep_dir`; returns its trials with their final states.

    `cuda_devices`: GPUs visible here (0: CPU trials, `--gpus N` then meaning N CPU processes each).
    Stopped by SIGINT / SIGTERM, it stops its trials (each writes last.pt) and raises SweepStopped.
    """
    gpus = plan.gpus
    if cuda_devices and parallel * gpus > cuda_devices:
        raise ConfigError(f"--parallel {parallel} x --gpus {gpus} needs {parallel * gpus} GPUs; {cuda_devices} visible")
    trials, continued = _load_or_start(sweep_dir, plan)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    fixed = plan.fixed
    save = lambda: atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(  # noqa: E731
        {"plan": plan.to_doc(), "trials": [dataclasses.asdict(t) for t in trials]}, indent=1))
    todo = [t for t in trials if t.status != "done"]
    if continued:
        report(f"continuing sweep {sweep_dir}: {len(trials) - len(todo)} of {len(trials)} trials done")
    for trial in todo:
        trial.status = "pending" if trial.status == "running" else trial.status  # a killed sweep's trials resume
    save()
    slots = core_slots(parallel)
    free = list(range(parallel))
    running: dict[int, tuple[Trial, subprocess.Popen, float, Any]] = {}
    stop: list[int] = []
    signalled: set[int] = set()
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (todo and not stop) or running:
            while todo and free and not stop:
                trial, slot = todo.pop(0), free.pop(0)
                env = dict(os.environ, OMP_NUM_THREADS=str(max(1, len(slots[slot]) // (1 if cuda_devices else gpus))))
                if cuda_devices:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in range(slot * gpus, (slot + 1) * gpus))
                cores = slots[slot]
                log = (sweep_dir / "logs" / f"{trial.name}.log").open("a")
                command = _trial_command(plan, trial, sweep_dir=sweep_dir)
                log.write(f"$ {' '.join(command[3:])}\n")
                log.flush()

                def pin(cores=cores):
                    _die_with_parent()
                    if hasattr(os, "sched_setaffinity"):
                        os.sched_setaffinity(0, cores)

                process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pin)
                trial.status, trial.starts = "running", trial.starts + 1
                running[slot] = (trial, process, time.monotonic(), log)
                report(f"[{sum(t.status == 'done' for t in trials)}/{len(trials)}] {trial.name}: started "
                       f"({' '.join(trial.overrides[len(fixed):]) or 'config as given'}; cores {_ranges(cores)})")
                save()
            if stop and running:
                for trial, process, _, _ in running.values():
                    if process.poll() is None and process.pid not in signalled:
                        process.send_signal(signal.SIGTERM)  # once: the trainer finishes its step and writes last.pt
                        signalled.add(process.pid)
            for slot, (trial, process, started, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                trial.seconds += time.monotonic() - started
                trial.exit_code = code
                trial.status = "done" if code == 0 else "stopped" if code in (PREEMPTED_EXIT_CODE, -signal.SIGTERM) else "failed"
                del running[slot]
                free.append(slot)
                free.sort()
                detail = "" if code == 0 else f" (exit code {code}; log {sweep_dir / 'logs' / f'{trial.name}.log'})"
                report(f"[{sum(t.status == 'done' for t in trials)}/{len(trials)}] {trial.name}: {trial.status} in "
                       f"{trial.seconds:.0f} s{detail}")
                save()
            if running:
                time.sleep(0.05)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for trial, process, _, log in running.values():  # only after an exception: stop what is left
            process.send_signal(signal.SIGTERM)
            process.wait()
            log.close()
            trial.status = "stopped"
        save()
    if stop:
        raise SweepStopped(f"sweep stopped by {signal.Signals(stop[0]).name}: "
                           f"{sum(t.status == 'done' for t in trials)} of {len(trials)} trials done; "
                           f"the same command continues it")
    return trials


class SweepStopped(GenflowError):
    """The sweep was asked to stop; its trials wrote last.pt (exit code 75, as a preempted `genflow train`)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=PREEMPTED_EXIT_CODE)


def _ranges(cores: list[int]) -> str:
    return ",".join(str(c) for c in cores) if len(cores) < 4 else f"{cores[0]}-{cores[-1]}"


# --- summary -------------------------------------------------------------------------------------------
def sweep_summary(sweep_dir: Path, trials: list[Trial], *, recipe: str) -> dict[str, Any]:
    """Each trial's best validation metric (and test metrics, when evaluated), and per grid point the mean
    and spread over seeds; written to `summary.json` and `summary.md` in the sweep dir."""
    from genflow.engine.run_table import run_summary

    rows, points = [], {}
    for trial in trials:
        run_dir = sweep_dir / recipe / trial.name
        summary = run_summary(run_dir) if (run_dir / "config.yaml").is_file() else {}
        best = summary.get("best") or {}
        row = {"trial": trial.name, **trial.point, "seed": trial.seed, "status": trial.status,
               "best_metric": best.get("metric"), "best": best.get("value"), "best_epoch": best.get("epoch"),
               "steps": summary.get("steps"), "seconds": round(trial.seconds, 1)}
        rows.append(row)
        points.setdefault(json.dumps(trial.point), []).append(row)
    grouped = []
    for key, members in points.items():
        values = [m["best"] for m in members if isinstance(m["best"], (int, float))]
        mean = sum(values) / len(values) if values else None
        spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
        grouped.append({**json.loads(key), "trials": len(members), "finished": sum(m["status"] == "done" for m in members),
                        "best_mean": mean, "best_std": spread})
    doc = {"trials": rows, "points": grouped}
    atomic_write_text(sweep_dir / "summary.json", json.dumps(doc, indent=1) + "\n")
    (sweep_dir / "summary.md").write_text(_markdown(rows) + "\n" + _markdown(grouped))
    metric = next((row["best_metric"] for row in rows if row["best_metric"]), "best")
    return {**doc, "text": _text_table(rows, rename={"best": f"best {metric}"}, drop=("best_metric",))
            + ("\n\nover seeds:\n" + _text_table(grouped) if len(grouped) < len(rows) else "")}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def _markdown(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _text_table(rows: list[dict[str, Any]], *, rename: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> str:
    from genflow.engine.run_table import aligned_text

    columns = [c for c in _columns(rows) if c not in drop]
    return aligned_text(tuple((rename or {}).get(c, c) for c in columns),
                        [tuple(_cell(row.get(c)) for c in columns) for row in rows])
