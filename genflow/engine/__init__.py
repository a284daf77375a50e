"""The training engine's public face: what a recipe, a benchmark or a user's script may use.

    from genflow.engine import Recipe, RecipeCard, StepContext, TrainConfig, evaluation, train

Names load on first use (PEP 562), so importing `genflow.engine.card` to list recipes stays
torch-free; everything else in `genflow.engine.*` is the engine's own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the engine module that defines it
_EXPORTS = {
    # writing a recipe
    "Recipe": "recipe", "StepContext": "recipe", "SampleOptions": "recipe", "EvalOptions": "recipe",
    "OdeSolverOptions": "recipe", "evaluation": "recipe", "get_recipe": "recipe", "available_recipes": "recipe",
    "RecipeCard": "card", "lazy_exports": "card",
    "TrainConfig": "train_config",
    "BatchDataset": "loader", "StreamedShards": "loader",
    # precision helpers
    "autocast_dtype": "precision", "resolve_precision": "precision", "cpu_has_native_bf16": "precision",
    "cpu_description": "precision",
    # running and reading runs
    "train": "trainer", "TrainResult": "trainer", "TrainingDiverged": "log_window",
    "start_run": "run_setup", "prepare_training": "run_setup",
    "load_run": "run_dir", "LoadedRun": "run_dir", "read_run_config": "run_dir",
    "read_metrics": "metrics_log", "load_checkpoint": "checkpoint",
    # runs trained by another codebase
    "RunImporter": "run_import", "write_imported_run": "run_import", "ported_summary": "run_import", "candidate_checkpoints": "run_import", "load_foreign_checkpoint": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'genflow.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"genflow.engine.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from genflow.engine.card import RecipeCard, lazy_exports
    from genflow.engine.checkpoint import load_checkpoint, load_foreign_checkpoint
    from genflow.engine.loader import BatchDataset, StreamedShards
    from genflow.engine.metrics_log import read_metrics
    from genflow.engine.precision import autocast_dtype, cpu_description, cpu_has_native_bf16, resolve_precision
    from genflow.engine.recipe import (EvalOptions, OdeSolverOptions, Recipe, SampleOptions, StepContext, available_recipes,
                                       evaluation, get_recipe)
    from genflow.engine.run_dir import LoadedRun, load_run, read_run_config
    from genflow.engine.run_import import RunImporter, candidate_checkpoints, ported_summary, write_imported_run
    from genflow.engine.run_setup import prepare_training, start_run
    from genflow.engine.train_config import TrainConfig
    from genflow.engine.log_window import TrainingDiverged
    from genflow.engine.trainer import TrainResult, train
