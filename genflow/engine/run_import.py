"""Runs trained by another codebase, made into genflow run directories: `genflow runs import KIND SOURCE`.

A `RunImporter` is a name, a one-line summary, an options dataclass (fields commented with their help
line) and the function that reads the source's run and writes a genflow run with
:func:`write_imported_run`. Recipes register theirs under the entry-point group `genflow.run_importers`:

    [project.entry-points."genflow.run_importers"]
    sage-learning = "genflow_recipes.namo.sage_import:IMPORT_SAGE_RUN"

An imported run holds `config.yaml` (the recipe's config that computes what the source's run computed,
with where it came from) and `checkpoints/last.pt` with the ported weights, so `genflow sample`, `eval`
and `export` take it like any run. It carries no optimiser state: it is for using a model, not for
resuming the source's training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from genflow.errors import CheckpointError
from genflow.lazy import pick_registered, registered

if TYPE_CHECKING:
    import torch

    from genflow.engine.recipe import Recipe

__all__ = ["RunImporter", "run_importers", "get_run_importer", "write_imported_run", "ported_summary", "candidate_checkpoints", "GROUP"]

GROUP = "genflow.run_importers"


@dataclass(frozen=True)
class RunImporter:
    """One `genflow runs import NAME SOURCE` command: `run(options, source)` writes the run and returns
    what to print (`key: value` lines, `run` among them)."""

    name: str
    summary: str
    options: type
    run: Callable[[Any, Path], dict[str, Any]]
    source: str  # what SOURCE is, e.g. "a sage_learning run directory (.hydra/config.yaml, checkpoints/*.ckpt)"


def run_importers() -> dict[str, RunImporter]:
    """The installed run importers, by name."""
    return registered(GROUP, RunImporter)


def get_run_importer(name: str) -> RunImporter:
    """The run importer `name`; an unknown one is one clear line with the closest names."""
    return pick_registered(run_importers(), name, "run kind")


def write_imported_run(*, recipe: Recipe, weights: dict[str, torch.Tensor], runs_root: str | Path, name: str,
                       imported_from: dict[str, Any], progress: dict[str, int] | None = None) -> Path:
    """Write `runs_root/<recipe>/<name>/`: config.yaml (the recipe's config and `imported_from`) and
    checkpoints/last.pt holding `weights`, after checking they load into the recipe's model exactly.

    Raises:
        CheckpointError: the weights do not fit the model (missing, unexpected or mis-shaped tensors,
            named), or a run of that name exists already.
    """
    import genflow
    from genflow.engine.checkpoint import atomic_torch_save
    from genflow.engine.run_dir import run_dir_for, write_run_config

    model = recipe.build_model()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k} {tuple(weights[k].shape)} (model: {tuple(expected[k].shape)})" for k in expected
              if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        problems = [f"missing {', '.join(missing[:5])}" if missing else "", f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                    f"shapes differ: {', '.join(shapes[:3])}" if shapes else ""]
        raise CheckpointError(f"{imported_from.get('checkpoint', 'the checkpoint')}: its weights do not fit {recipe.name}'s "
                              f"model ({'; '.join(p for p in problems if p)})")
    run_dir = run_dir_for(runs_root, recipe.name, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, recipe.name, recipe.config, {"imported_from": imported_from})
    state = {"model": {k: v.detach().clone().contiguous() for k, v in weights.items()}, "ema": None,
             "progress": dict(progress or {}), "imported_from": imported_from, "genflow_version": genflow.__version__}
    atomic_torch_save(state, run_dir / "checkpoints" / "last.pt")
    return run_dir


def ported_summary(weights: dict[str, torch.Tensor], ignored: list[str], placeholders: list[str]) -> dict[str, str]:
    """The `weights` / `not loaded` lines an importer prints: what was ported, and what the file held besides."""
    return {"weights": f"{len(weights)} tensors ported ({sum(v.numel() for v in weights.values()):,} parameters)",
            "not loaded": f"{len(ignored)} other tensors, {len(placeholders)} non-tensor classes (inert placeholders)"}


def candidate_checkpoints(folder: Path, chosen: str | None, *, what_writes_them: str) -> list[Path]:
    """The checkpoint the user named (`chosen`: a path, or a file name in `folder`) as a one-item list,
    else every `.ckpt` in `folder`, sorted, for the importer to choose from.

    Raises:
        CheckpointError: the named file does not exist, or `folder` holds no `.ckpt` (the message says
            `what_writes_them` there).
    """
    if chosen:
        path = Path(chosen) if Path(chosen).is_file() else folder / chosen
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        return [path]
    files = sorted(folder.glob("*.ckpt"))
    if not files:
        raise CheckpointError(f"{folder}: no .ckpt files ({what_writes_them})")
    return files
