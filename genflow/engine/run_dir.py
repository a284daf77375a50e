"""Run directories: `runs/<recipe>/<name>/` is self-describing.

It holds the resolved `config.yaml` (with the recipe name, genflow version and git commit),
`checkpoints/` (`last.pt`, `best.pt`, `epoch_XXXX.pt`, with `train.keep_top_k` `top_epoch_XXXX.pt`, after
`genflow export --average` `average_best_K.pt` / `average_last_K.pt`), `tb/` (TensorBoard), `metrics.jsonl`
and the recipe's pictures. `sample`, `eval` and `export` need only this directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import genflow
from genflow.config import apply_overrides, config_from_dict, config_to_dict
from genflow.engine.checkpoint import atomic_write_text, load_checkpoint
from genflow.engine.recipe import Recipe, get_recipe
from genflow.errors import CheckpointError, ConfigError

__all__ = ["LoadedRun", "default_run_name", "check_run_name", "run_dir_for", "write_run_config", "record_runtime", "read_run_config",
           "find_latest_run", "load_run", "pin_data_path", "git_commit", "environment"]

CONFIG_FILE = "config.yaml"


def _git(*args: str) -> str | None:
    """Output of a git command in the genflow checkout (None when not in a git work tree)."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(genflow.__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the genflow checkout (None when not in a git work tree)."""
    return _git("rev-parse", "HEAD") or None


def environment() -> dict[str, Any]:
    """What produced a run: versions, host, and the exact code (commit, and whether the tree had edits)."""
    import platform
    import socket

    import accelerate

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"genflow": genflow.__version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "accelerate": accelerate.__version__, "host": socket.gethostname(), "git_commit": git_commit(),
            "git_dirty": None if status is None else bool(status)}


def default_run_name() -> str:
    """A run named by its start time, e.g. `20261121-224500`."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_run_name(name: str) -> str:
    """A run name is one directory name inside `runs/<recipe>/`: no path separator, not `.` / `..`."""
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or name in (".", "..") or any(sep in name for sep in separators) or "\0" in name or name != name.strip():
        raise ConfigError(f"--name {name!r}: a run name is one directory name under runs/<recipe>/ (no '/', '\\', "
                          f"'..' or surrounding spaces); pass --runs-dir to train somewhere else")
    return name


def run_dir_for(runs_root: str | Path, recipe: str, name: str | None) -> Path:
    """`runs_root/recipe/name` (named by the start time if no name is given); refuses to reuse a trained
    run. Nothing is created: the engine makes the directory once the data and the model are built."""
    run_dir = Path(runs_root) / recipe / check_run_name(name or default_run_name())
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: a run with this name exists; pass --resume {run_dir} to continue it, or another --name")
    return run_dir


def write_run_config(run_dir: Path, recipe: str, config: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config with provenance, atomically."""
    env = environment()
    doc = {
        "recipe": recipe,
        "genflow_version": genflow.__version__,
        "git_commit": env["git_commit"],
        "written": _dt.datetime.now().isoformat(timespec="seconds"),
        **(extra or {}),
        "environment": env,
        "config": config_to_dict(config),
    }
    return _write_yaml(run_dir / CONFIG_FILE, doc)


def record_runtime(run_dir: Path, runtime: dict[str, Any]) -> Path:
    """Add what the engine resolved on this machine (device, precision, world size) to `config.yaml`.

    The config keeps the request (e.g. `precision: auto`); `runtime` says what it became here.
    """
    doc = read_run_config(run_dir)
    doc["runtime"] = runtime
    doc["config"] = doc.pop("config")  # keep the config last, where a reader expects it
    return _write_yaml(Path(run_dir) / CONFIG_FILE, doc)


def _write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    return atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a genflow run directory (no {CONFIG_FILE})")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise CheckpointError(f"{path}: not valid YAML") from None
    if not isinstance(doc, dict) or "recipe" not in doc or "config" not in doc:
        raise CheckpointError(f"{path}: missing 'recipe' or 'config' (not written by genflow?)")
    return doc


def find_latest_run(runs_root: str | Path, recipe: str) -> Path | None:
    """The most recently updated run of `recipe` that has a `last` checkpoint."""
    candidates = [p.parent.parent for p in Path(runs_root, recipe).glob("*/checkpoints/last.pt")]
    return max(candidates, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime, default=None)


@dataclass
class LoadedRun:
    """A trained run, ready for sampling, evaluation or export."""

    run_dir: Path
    recipe: Recipe
    model: nn.Module
    checkpoint: Path
    state: dict[str, Any]

    @property
    def config(self) -> Any:
        return self.recipe.config


def pin_data_path(recipe_cls: type[Recipe], config: Any) -> dict[str, str] | None:
    """Make the config's dataset path (`recipe_cls.data_path_key`) absolute, in place.

    A relative path is taken from the working directory. Returns `{"key", "given", "absolute",
    "manifest_sha256"}` (the sha256 of the dataset's `manifest.json`, which lists every shard's own sha256:
    which data a run trained on; null when there is none), or None when the recipe has no dataset path
    (a stream).
    """
    key = recipe_cls.data_path_key
    if not key:
        return None
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part, None)
    given = getattr(node, leaf, None) if node is not None else None
    if not isinstance(given, str) or not given:
        return None
    absolute = str(Path(given).expanduser().resolve())
    setattr(node, leaf, absolute)
    manifest = Path(absolute) / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
    return {"key": key, "given": given, "absolute": absolute, "manifest_sha256": digest}


# What `sample` / `eval` may change in a trained run's config: where its data is, how it is evaluated.
RUN_OVERRIDE_SECTIONS = ("data", "eval", "sampling", "generation")


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu", use_ema: bool = True,
             overrides: list[str] | None = None, need_data: bool = True) -> LoadedRun:
    """Rebuild a run's recipe and model from its directory and load a checkpoint.

    Args:
        checkpoint: `best`, `last`, a name in `checkpoints/` (e.g. `epoch_0010`, `top_epoch_0012`,
            `average_best_3`) or a file path. `best` falls back to `last` when no best checkpoint was
            written yet. An averaged checkpoint holds its weights as `model` (no `ema`).
        use_ema: load the EMA weights when the run kept them.
        overrides: `key=value` changes of the run's `data.*` / `eval.*` / `sampling.*` config,
            e.g. `data.path=/new/place` for a run whose dataset moved.
        need_data: check that the run's dataset is there (export needs only the weights).

    Raises:
        CheckpointError: not a run directory, no such checkpoint, or the run's dataset is not where
            the run recorded it (the message names the key that points it elsewhere).
    """
    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    recipe_cls = get_recipe(doc["recipe"])
    data = doc["config"]
    for item in overrides or []:
        section = item.partition("=")[0].strip().split(".")[0]
        if section not in RUN_OVERRIDE_SECTIONS:
            raise ConfigError(f"override '{item}': a trained run's model and training config are fixed; "
                              f"only {', '.join(s + '.*' for s in RUN_OVERRIDE_SECTIONS)} keys can change here")
    data = apply_overrides(data, list(overrides or []), recipe_cls.config_class)
    config = config_from_dict(recipe_cls.config_class, data)
    pinned = pin_data_path(recipe_cls, config)
    if need_data and pinned is not None and not Path(pinned["absolute"]).exists():
        raise CheckpointError(f"{pinned['absolute']}: the dataset of run {run_dir} is not there (moved or deleted?); "
                              f"point the run at it with {pinned['key']}=DIR")
    recipe = recipe_cls(config)
    ckpt_dir = run_dir / "checkpoints"
    path = Path(checkpoint) if checkpoint.endswith(".pt") and Path(checkpoint).is_file() else \
        ckpt_dir / (checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt")  # `average_best_3` or `average_best_3.pt`
    if checkpoint == "best" and not path.is_file():
        path = ckpt_dir / "last.pt"
    if not path.is_file():
        have = sorted(p.stem for p in ckpt_dir.glob("*.pt"))
        raise CheckpointError(f"{path}: checkpoint not found (this run has: {', '.join(have) or 'none — train it first'})")
    state = load_checkpoint(path)
    model = recipe.build_model()
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    model.to(device).eval()
    return LoadedRun(run_dir=run_dir, recipe=recipe, model=model, checkpoint=path, state=state)
