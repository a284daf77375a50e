"""A table across runs: what `genflow runs ls [DIR]` and `genflow runs compare RUN...` print.

`run_summary(run_dir)` reads a run directory without loading its weights: `config.yaml` (recipe, resolved
config, runtime), `metrics.jsonl` (steps, epochs, the best validation value) and `eval/*.json` (test
results); `runs_table(summaries, fmt=..., sort=..., descending=...)` lays summaries out as aligned text,
markdown or JSON. Importing this module imports no torch. Two things need more, and only they pay for it:
the changed keys need the recipe's config class (importing the recipe imports torch; once per recipe),
and whether an unfinished run stopped early is read from `checkpoints/last.pt` (memory-mapped: its small
`best` entry is read, not the weights).

A run's status, from its files (genflow keeps no lock or pid file), the first that applies:
- imported: made by `genflow runs import` (weights only, never trained here);
- finished: trained to its budget: `train.epochs` epochs done, or `train.max_steps` steps;
- stopped early: `train.early_stop_patience` ended it (recorded in `checkpoints/last.pt`);
- running: metrics.jsonl, last.pt or config.yaml was written in the last `RUNNING_WITHIN_S` seconds (a run
  killed within them shows as running until they pass);
- failed: it never logged a step nor wrote a checkpoint (its start failed, or it was stopped before);
- interrupted: stopped short of its budget: Ctrl-C, preemption, a crash or a diverged loss (the files do not
  say which); `genflow train RECIPE --resume RUN` continues it.

Test metrics are the numbers of each `RUN/eval/*.json` that holds a JSON object with `"split": "test"`
(what `genflow eval NAME RUN` saves there), keyed by the checkpoint evaluated (`best`, `average_best_3`;
the file's name without `.json` for a file that does not say).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml

from genflow.errors import CheckpointError, ConfigError, GenflowError

__all__ = ["COLUMNS", "FORMATS", "RUNNING_WITHIN_S", "run_summary", "find_runs", "collect_summaries", "runs_table", "aligned_text", "saved_evaluations",
           "check_table_options"]

COLUMNS = ("recipe", "name", "status", "changed", "epochs", "steps", "best", "test", "wall", "device")
FORMATS = ("text", "markdown", "json")
RUNNING_WITHIN_S = 600  # a run that wrote its log or a checkpoint this recently is taken to be training
START_WRITES_WITHIN_S = 300  # config.yaml is last written (its runtime added) this soon after the start it records
CHANGED_SHOWN = 5  # changed keys shown in a table cell; the JSON has them all
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"

# (recipe, recorded config_file) -> (flattened config the run started from, whether that is the recipe's default
# YAML), or the reason it cannot be known; a recipe's import takes a second, so each is made once
_START_CONFIGS: dict[tuple[str, str | None], tuple[dict[str, Any], bool] | str] = {}


# --- one run ---------------------------------------------------------------------------------------------
def run_summary(run_dir: Path) -> dict[str, Any]:
    """What one run is and reached, as plain values (JSON-ready, `None` where unknown):

    `recipe`, `name` (the directory's), `path`, `status` (see the module's docstring), `stopped_early`
    (epoch), `config_file` (the YAML it started from, as config.yaml recorded it; None: not recorded, the
    recipe's default is assumed), `config_is_default` (that YAML is the recipe's default), `changed`
    (dotted key -> value where the resolved config differs from that YAML; None when the recipe is not
    installed), `steps`, `epochs` (done), `epochs_planned`, `max_steps`, `best` ({metric, mode, value,
    epoch} of the validations in metrics.jsonl), `test` (result file -> metric -> value), `wall_s`,
    `started`, `device` (GPU name, else the CPU model), `world_size`, and `warnings` (what could not be
    read, e.g. a damaged metrics.jsonl line, naming the file inside the run dir).

    Raises:
        CheckpointError: `run_dir` is not a run directory (no config.yaml, or one without `recipe` / `config`).
    """
    run_dir = Path(run_dir)
    doc = _read_config(run_dir)
    if doc is None or not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{run_dir}: not a genflow run directory (no {CONFIG_FILE} with 'recipe' and 'config')")
    notes: list[str] = []
    records = _read_records(run_dir, notes)
    train = doc["config"].get("train") or {}
    steps = max((r["step"] for r in records), default=None)
    epochs = _epochs_done(records)
    status, stopped_early = _status(run_dir, doc, steps=steps, epochs=epochs, notes=notes)
    changed, default_start = _changed_keys(doc, notes)
    runtime = doc.get("runtime") or {}
    return {
        "recipe": doc["recipe"], "name": run_dir.name, "path": str(run_dir), "status": status, "stopped_early": stopped_early,
        "config_file": doc.get("config_file"), "config_is_default": default_start, "changed": changed,
        "steps": steps, "epochs": epochs, "epochs_planned": train.get("epochs"), "max_steps": train.get("max_steps"),
        "best": _best(records, metric=train.get("best_metric", "val_loss"), mode=train.get("best_mode", "min")),
        "test": _test_results(run_dir, notes), "wall_s": _wall_seconds(run_dir, doc), "started": _text(doc.get("written")),
        "device": _device(runtime), "world_size": runtime.get("world_size"), "warnings": notes,
    }


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    """config.yaml of `run_dir` when it names a recipe; None when there is none or it names no recipe.
    A file that cannot be read or parsed is a CheckpointError naming it."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return doc if isinstance(doc, dict) and "recipe" in doc else None


def _read_records(run_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl's records with an int `step` and `epoch`; lines that are not are counted in `notes`."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            bad += 1
    if bad:
        notes.append(f"{METRICS_FILE}: {bad} line(s) not a metrics record, left out")
    return records


def _epochs_done(records: list[dict[str, Any]]) -> int | None:
    """Completed epochs: the latest validation's epoch, or one less than the latest training record's (that
    epoch may still have been in progress); a lower bound when a run stopped between validations."""
    val = [r["epoch"] for r in records if r.get("kind") == "val"]
    train = [r["epoch"] - 1 for r in records if r.get("kind") == "train"]
    return max(val + train, default=None)


def _best(records: list[dict[str, Any]], *, metric: str, mode: str) -> dict[str, Any] | None:
    """The best finite `metric` among the validations, the first to reach it (as the trainer picks best.pt)."""
    best = None
    for record in records:
        value = record.get(metric)
        if record.get("kind") != "val" or not _is_number(value) or not math.isfinite(value):
            continue
        if best is None or (value < best["value"] if mode == "min" else value > best["value"]):
            best = {"metric": metric, "mode": mode, "value": float(value), "epoch": record["epoch"]}
    return best


def _status(run_dir: Path, doc: dict[str, Any], *, steps: int | None, epochs: int | None,
            notes: list[str]) -> tuple[str, int | None]:
    """(status, epoch it stopped early at); the rules are in the module's docstring."""
    if doc.get("imported_from"):
        return "imported", None
    train = doc["config"].get("train") or {}
    planned, max_steps = train.get("epochs"), train.get("max_steps")
    if (epochs is not None and _is_number(planned) and epochs >= planned) or \
            (steps is not None and _is_number(max_steps) and steps >= max_steps):
        return "finished", None
    last = run_dir / "checkpoints" / "last.pt"
    if train.get("early_stop_patience") and last.is_file():
        stopped = _stopped_early(last, notes)
        if stopped is not None:
            return "stopped early", stopped
    written = [p.stat().st_mtime for p in (run_dir / METRICS_FILE, last, run_dir / CONFIG_FILE) if p.is_file()]
    if written and time.time() - max(written) < RUNNING_WITHIN_S:
        return "running", None
    if steps is None and not any((run_dir / "checkpoints").glob("*.pt")):
        return "failed", None
    return "interrupted", None


def _stopped_early(checkpoint: Path, notes: list[str]) -> int | None:
    """The epoch `best.stopped_early` of a checkpoint records, or None."""
    import torch  # only here: a run that may have stopped early

    try:  # memory-mapped: the weights stay on disk, only the pickled dicts are read
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        notes.append(f"checkpoints/{checkpoint.name}: not readable ({type(exc).__name__}): stopped early or not is unknown")
        return None
    best = state.get("best") if isinstance(state, dict) else None
    return best.get("stopped_early") if isinstance(best, dict) else None


def _changed_keys(doc: dict[str, Any], notes: list[str]) -> tuple[dict[str, Any] | None, bool | None]:
    """(dotted key -> the run's value, for each key whose value differs from the YAML the run started from;
    whether that YAML is the recipe's default). Keys that only one side has (genflow added or dropped them
    since) are left out; the dataset path counts as the user gave it, not as the run pinned it."""
    try:
        start, is_default = _start_config(doc["recipe"], doc.get("config_file"))
    except (GenflowError, ImportError) as exc:
        notes.append(f"changed keys unknown: {exc}")
        return None, None
    values = _flatten(doc["config"])
    data_path = doc.get("data_path") or {}
    if data_path.get("key") in values and data_path.get("given"):
        values[data_path["key"]] = data_path["given"]
    return {key: value for key, value in values.items() if key in start and start[key] != value}, is_default


def _start_config(recipe: str, config_file: str | None) -> tuple[dict[str, Any], bool]:
    """The flattened config a run of `recipe` started from (its recorded YAML, else the recipe's default, as
    installed now) and whether that is the recipe's default YAML."""
    key = (recipe, config_file)
    if key not in _START_CONFIGS:
        from genflow.config import config_to_dict, load_config
        from genflow.engine.recipe import get_recipe

        try:
            cls = get_recipe(recipe)
            path = cls.config_file(config_file)
            start = _flatten(config_to_dict(load_config(cls.config_class, path, [])))
            _START_CONFIGS[key] = (start, Path(path).resolve() == Path(cls.default_config).resolve())
        except (GenflowError, ImportError) as exc:
            _START_CONFIGS[key] = str(exc)
    found = _START_CONFIGS[key]
    if isinstance(found, str):
        raise GenflowError(found)
    return found


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def saved_evaluations(run_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Each `RUN/eval/*.json` that holds a JSON object (what `genflow eval` saves): `file` (its name without
    `.json`), `checkpoint` (the stem of the checkpoint evaluated, None where the file does not say), `split`,
    `evaluation` and its numbers. A file that cannot be read is named in `notes` and left out."""
    found = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            if notes is not None:
                notes.append(f"eval/{path.name}: not readable as JSON ({str(exc).splitlines()[0]}), left out")
            continue
        if isinstance(doc, dict):
            found.append({"file": path.stem, "checkpoint": Path(str(doc["checkpoint"])).stem if doc.get("checkpoint") else None,
                          "split": doc.get("split"), "evaluation": doc.get("evaluation"),
                          "numbers": {key: value for key, value in doc.items() if _is_number(value)}})
    return found


def _test_results(run_dir: Path, notes: list[str]) -> dict[str, dict[str, float]]:
    """The checkpoint evaluated (`best`, `average_best_3`; else the file's name) -> its numbers on the test split."""
    results: dict[str, dict[str, float]] = {}
    for saved in saved_evaluations(run_dir, notes):
        if saved["split"] == "test":
            results.setdefault(saved["checkpoint"] or saved["file"], {}).update(saved["numbers"])
    return results


def _wall_seconds(run_dir: Path, doc: dict[str, Any]) -> float | None:
    """From config.yaml's `written` (the start) to the last write of metrics.jsonl or last.pt.

    File times survive only some copies (`cp -p`, rsync -a; not a plain `cp`, a git checkout or an archive
    without them), so they count only while config.yaml's own time still matches its `written` (the engine
    writes it at the start, adding the runtime seconds later). None then, and for a resumed run (its first
    start is not recorded) or an imported one.
    """
    if doc.get("resumed_from") or doc.get("imported_from"):
        return None
    written = doc.get("written")
    try:
        start = (written if isinstance(written, _dt.datetime) else _dt.datetime.fromisoformat(str(written))).timestamp()
    except ValueError:
        return None
    if not -2 <= (run_dir / CONFIG_FILE).stat().st_mtime - start <= START_WRITES_WITHIN_S:
        return None
    ends = [p.stat().st_mtime for p in (run_dir / METRICS_FILE, run_dir / "checkpoints" / "last.pt") if p.is_file()]
    seconds = max(ends, default=start) - start
    return round(seconds, 1) if ends and seconds >= 0 else None


def _device(runtime: dict[str, Any]) -> str | None:
    """The GPU's name, else the CPU's model (its description up to the details in parentheses)."""
    cpu = str(runtime.get("cpu") or "").split(" (")[0].strip()
    return runtime.get("gpu") or cpu or runtime.get("device")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, _dt.datetime) else (None if value is None else str(value))


# --- many runs -------------------------------------------------------------------------------------------
def find_runs(root: Path, *, skipped: list[str] | None = None) -> list[Path]:
    """Every run directory at or under `root` (a run dir, `runs/<recipe>`, `runs/`, a sweep's directory),
    sorted by path: directories whose config.yaml names a recipe. A directory whose config.yaml cannot be
    read is left out and named, as `path: reason`, in `skipped`; without a list, one warning names them all.

    Raises:
        GenflowError: `root` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise GenflowError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}; expected a run "
                           f"directory or a directory holding runs")
    found: list[Path] = []
    problems: list[str] = []
    walk_error = lambda exc: problems.append(f"{exc.filename}: {exc.strerror}")  # noqa: E731
    for current, dirs, files in os.walk(root, onerror=walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if CONFIG_FILE not in files:
            continue
        try:
            doc = _read_config(Path(current))
        except CheckpointError as exc:
            problems.append(str(exc))
            dirs[:] = []  # a damaged run: no runs inside it to look for
            continue
        if doc is not None:
            found.append(Path(current))
            dirs[:] = []
    if problems:
        if skipped is None:
            warnings.warn(f"{len(problems)} run dir(s) under {root} cannot be read: {'; '.join(problems)}", stacklevel=2)
        else:
            skipped.extend(problems)
    return sorted(found)


def collect_summaries(paths: Sequence[Path], *, empty_ok: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Summaries of the runs at or under each path, in the order given (each run once), and the runs that
    could not be read, as `path: reason` lines.

    Raises:
        GenflowError: a path is not a directory, or (with `empty_ok=False`) is neither a run dir nor holds one.
    """
    summaries: list[dict[str, Any]] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for path in paths:
        already = len(skipped)
        found = find_runs(path, skipped=skipped)
        if not found and not empty_ok:  # the reason its one run cannot be read, else that it holds none
            raise GenflowError(skipped[already] if len(skipped) > already else
                               f"{path}: not a run directory (no {CONFIG_FILE} naming a recipe), and no runs under it")
        for run_dir in found:
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            try:
                summaries.append(run_summary(run_dir))
            except CheckpointError as exc:  # its message names the file
                skipped.append(str(exc))
            except OSError as exc:
                skipped.append(f"{exc.filename or run_dir}: {exc.strerror or exc}")
    return summaries, skipped


# --- the table -------------------------------------------------------------------------------------------
def check_table_options(*, fmt: str, sort: str | None) -> None:
    """ConfigError for a format or sort key `runs_table` does not know (checked before reading any run)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected {' | '.join(FORMATS)}")
    if sort is not None and sort not in COLUMNS and not (sort.startswith("test.") and len(sort) > len("test.")):
        raise ConfigError(f"--sort {sort!r}: expected a column ({', '.join(COLUMNS)}) or test.METRIC")


def runs_table(summaries: Sequence[dict[str, Any]], *, fmt: str = "text", sort: str | None = None,
               descending: bool = False, metrics: Sequence[str] = ()) -> str:
    """`run_summary` dicts as a table: `text` (aligned columns for a terminal), `markdown`, or `json` (the
    summaries themselves, NaN and infinities as null).

    Args:
        sort: a column of `COLUMNS` or `test.METRIC`; numbers sort as numbers, text as text, and runs
            without a value come last either way. None keeps the order given.
        metrics: test metrics to show in the `test` column (by default it names the result files).
    """
    check_table_options(fmt=fmt, sort=sort)
    rows = _sorted(list(summaries), sort, descending, metrics)
    if fmt == "json":
        return json.dumps([_finite(row) for row in rows], indent=1)
    cells = [tuple(_cell(row, column, metrics) or "-" for column in COLUMNS) for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells])
    return aligned_text(COLUMNS, cells)


def aligned_text(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A header line and one line per row, columns padded to their widest cell, the last one free text:
    greppable, and never wrapped or cut at the terminal width (as a rich table would be)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)][:-1]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) + ("  " + str(line[-1]) if line[-1] else "")
                      for line in [headers, *rows])


def _cell(row: dict[str, Any], column: str, metrics: Sequence[str]) -> str:
    value = row.get(column)
    if column == "changed":
        return _changed_cell(row)
    if column == "epochs":
        planned = row.get("epochs_planned")
        return "" if value is None else f"{value}/{planned}" if planned is not None else str(value)
    if column == "best":
        best = value or {}
        return f"{best['metric']}={best['value']:.4g} @{best['epoch']}" if best else ""
    if column == "test":
        if not metrics:
            return ", ".join(row.get("test") or {})
        results = row.get("test") or {}
        cells = [(where, " ".join(f"{name}={_number(values[name])}" for name in metrics if name in values))
                 for where, values in sorted(results.items(), key=lambda item: item[0] != "best")]
        cells = [(where, text) for where, text in cells if text]
        if len(cells) == 1 and cells[0][0] == "best":
            return cells[0][1]
        return "; ".join(f"{where}: {text}" for where, text in cells)
    if column == "wall":
        return _duration(row.get("wall_s"))
    if column == "device":
        world = row.get("world_size") or 1
        return "" if value is None else f"{world}x {value}" if world > 1 else str(value)
    return "" if value is None else str(value)


def _changed_cell(row: dict[str, Any]) -> str:
    """`config=NAME` when the run started from another YAML than the recipe's default, then the first
    `CHANGED_SHOWN` changed keys as key=value (model and training keys before data and eval ones, which
    differ less between runs one compares) and `+N more`; `?` when unknown."""
    changed = row.get("changed")
    if changed is None:
        return "?"
    keys = sorted(changed, key=lambda key: key.startswith(("data.", "eval.")))  # stable: the config's order otherwise
    parts = [f"{key}={_value_text(changed[key])}" for key in keys]
    if len(parts) > CHANGED_SHOWN:
        parts = parts[:CHANGED_SHOWN] + [f"+{len(parts) - CHANGED_SHOWN} more"]
    if row.get("config_file") and row.get("config_is_default") is False:
        parts.insert(0, f"config={Path(row['config_file']).name}")
    return " ".join(parts)


def _value_text(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _test_metric(row: dict[str, Any], name: str) -> float | None:
    """Test metric `name` of best.pt's evaluation, else of the first other checkpoint's (by name) that has it."""
    results = row.get("test") or {}
    for _, values in sorted(results.items(), key=lambda item: (item[0] != "best", item[0])):
        if name in values:
            return values[name]
    return None


def _sort_value(row: dict[str, Any], key: str, metrics: Sequence[str]) -> Any:
    """A number for numeric columns, else the cell's text; None when the run has no value."""
    if key.startswith("test."):
        value = _test_metric(row, key[len("test."):])
    elif key == "test" and metrics:
        value = _test_metric(row, metrics[0])
    elif key in ("steps", "epochs"):
        value = row.get(key)
    elif key == "best":
        value = (row.get("best") or {}).get("value")
    elif key == "wall":
        value = row.get("wall_s")
    else:
        value = _cell(row, key, metrics) or None
    return None if isinstance(value, float) and math.isnan(value) else value


def _sorted(rows: list[dict[str, Any]], key: str | None, descending: bool, metrics: Sequence[str]) -> list[dict[str, Any]]:
    if key is None:
        return rows
    keyed = [(_sort_value(row, key, metrics), row) for row in rows]
    present = sorted((pair for pair in keyed if pair[0] is not None), key=lambda pair: pair[0], reverse=descending)
    return [row for _, row in present] + [row for value, row in keyed if value is None]


def _finite(value: Any) -> Any:
    """NaN and infinities as None (JSON has no spelling for them), in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
