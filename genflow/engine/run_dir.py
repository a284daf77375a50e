"""Run directories: `runs/<recipe>/<name>/` is self-describing.

It holds the resolved `config.yaml` (with the recipe name, genflow version and git commit),
`checkpoints/` (`last.pt`, `best.pt`, `epoch_XXXX.pt`), `tb/` (TensorBoard), `metrics.jsonl`
and the recipe's pictures. `sample`, `eval` and `export` need only this directory.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import genflow
from genflow.config import config_from_dict, config_to_dict
from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.recipe import Recipe, get_recipe
from genflow.errors import CheckpointError

__all__ = ["LoadedRun", "default_run_name", "new_run_dir", "write_run_config", "read_run_config", "find_latest_run", "load_run", "git_commit"]

CONFIG_FILE = "config.yaml"


def git_commit() -> str | None:
    """The commit of the genflow checkout (None when not in a git work tree)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(genflow.__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def default_run_name() -> str:
    """A run named by its start time, e.g. `20261121-224500`."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run_dir(runs_root: str | Path, recipe: str, name: str | None) -> Path:
    """`runs_root/recipe/name`, named by the time if no name is given; refuses to reuse a trained run."""
    name = name or default_run_name()
    run_dir = Path(runs_root) / recipe / name
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: a run with this name exists; pass --resume {run_dir} to continue it, or another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_run_config(run_dir: Path, recipe: str, config: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config with provenance, atomically."""
    doc = {
        "recipe": recipe,
        "genflow_version": genflow.__version__,
        "git_commit": git_commit(),
        "written": _dt.datetime.now().isoformat(timespec="seconds"),
        **(extra or {}),
        "config": config_to_dict(config),
    }
    path = run_dir / CONFIG_FILE
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=run_dir)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(doc, handle, sort_keys=False)
    os.replace(tmp, path)
    return path


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


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedRun:
    """Rebuild a run's recipe and model from its directory and load a checkpoint.

    Args:
        checkpoint: `best`, `last`, a name in `checkpoints/` (e.g. `epoch_0010`) or a file path.
            `best` falls back to `last` when no best checkpoint was written yet.
        use_ema: load the EMA weights when the run kept them.
    """
    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    recipe_cls = get_recipe(doc["recipe"])
    config = config_from_dict(recipe_cls.config_class, doc["config"])
    recipe = recipe_cls(config)
    ckpt_dir = run_dir / "checkpoints"
    path = Path(checkpoint) if checkpoint.endswith(".pt") and Path(checkpoint).is_file() else ckpt_dir / f"{checkpoint}.pt"
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
