"""A run's set-up: from a command line (or a recipe built in Python) to a run dir with its config, then training.

`prepare_training` resolves what `genflow train` was asked (recipe, config, run dir, checkpoint to
resume); `start_run` does the same for a recipe object a script built, so both record the run alike."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genflow.config import apply_overrides, config_from_dict, load_config
from genflow.engine.launch import agree_on
from genflow.engine.recipe import Recipe, get_recipe
from genflow.engine.run_dir import (check_run_name, default_run_name, find_latest_run, pin_data_path, read_run_config,
                                    run_dir_for, write_run_config)
from genflow.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from genflow.engine.trainer import TrainResult

__all__ = ["TrainingPlan", "prepare_training", "record_run_config", "start_run"]


@dataclass
class TrainingPlan:
    recipe: Recipe
    run_dir: Path
    resume_checkpoint: Path | None
    is_main: bool
    overrides: list[str]  # the config overrides, without the `ckpt_path=` / `resume_from_checkpoint=` that became resume_checkpoint
    created_run_dir: bool = False  # this call made the run dir: a start that fails before training removes it again


def prepare_training(recipe_name: str, *, config_path: Path | None = None, overrides: list[str] | None = None,
                     name: str | None = None, resume: str | None = None, runs_root: Path = Path("runs"),
                     create: bool = True) -> TrainingPlan:
    """Resolve the config and the run dir of a `genflow train` call.

    A fresh run reads `config_path` (default: the recipe's YAML) and applies `overrides`. A resumed run
    (`resume` = a run dir, or 'auto' for the newest run of the recipe; 'auto' with a `name`: that run
    if it has a checkpoint, else a fresh run of that name, as a requeued cluster job needs) starts from
    the run's saved config, applies `overrides` on top (e.g. more epochs) and continues from
    `checkpoints/last.pt`.
    Only the main process writes; `create=False` resolves without writing (before a launch).
    """
    recipe_cls = get_recipe(recipe_name)
    recipe_name = recipe_cls.name  # an alias (e.g. a source config name) trains the canonical recipe
    overrides = list(overrides or [])
    resume = _take_ckpt_path(overrides, resume)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if resume == "auto" and name is not None:  # a (re)queued job: continue run NAME if it has a checkpoint, else start it
        named = Path(runs_root) / recipe_name / check_run_name(name)
        resume = str(named) if (named / "checkpoints" / "last.pt").is_file() else None
    if resume is not None:
        run_dir = find_latest_run(runs_root, recipe_name) if resume == "auto" else Path(resume)
        if run_dir is None:
            raise CheckpointError(f"--resume auto: no run of '{recipe_name}' with a checkpoint under {runs_root}/{recipe_name}")
        if run_dir.suffix == ".pt":  # a checkpoint file inside RUN/checkpoints/
            checkpoint, run_dir = run_dir, run_dir.parent.parent
            if not checkpoint.is_file():
                raise CheckpointError(f"--resume {checkpoint}: no such checkpoint file")
        else:
            checkpoint = run_dir / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise CheckpointError(f"--resume {run_dir}: no checkpoints/last.pt to resume from")
        doc = read_run_config(run_dir)
        if doc.get("imported_from"):  # `genflow runs import`: weights only
            raise CheckpointError(f"--resume {run_dir}: imported from {doc['imported_from'].get('codebase', 'another codebase')} "
                                  "with its weights only (no optimiser state), so it cannot be resumed; sample, eval or export it")
        if doc["recipe"] != recipe_name:
            raise ConfigError(f"--resume {run_dir}: that run is recipe '{doc['recipe']}', not '{recipe_name}'")
        if config_path is not None:
            raise ConfigError("--config cannot be combined with --resume: the run's saved config is used; pass overrides instead")
        config = config_from_dict(recipe_cls.config_class, apply_overrides(doc["config"], overrides, recipe_cls.config_class))
        config_file = doc.get("config_file")  # where the run first started from; a resume reads no YAML
    else:
        yaml_path = recipe_cls.config_file(config_path)
        config = load_config(recipe_cls.config_class, yaml_path, overrides)
        config_file = _config_file_record(recipe_cls, yaml_path)
        checkpoint = None
        if name is None and create:  # several processes (torchrun, srun, accelerate launch): rank 0's start time names the run
            name = agree_on(default_run_name())
        if os.environ.get("LOCAL_RANK") and not is_main:  # a worker: rank 0 checks for an earlier run of this name
            run_dir = Path(runs_root) / recipe_name / check_run_name(name or default_run_name())
        else:
            run_dir = run_dir_for(runs_root, recipe_name, name)
    data_path = pin_data_path(recipe_cls, config)  # absolute: the run works from any directory
    if resume is not None and data_path is not None:  # keep what the user typed when the run began
        first = doc.get("data_path") or {}
        if first.get("absolute") == data_path["absolute"] and first.get("given"):
            data_path["given"] = first["given"]
    created = False
    if create and is_main:
        created = not run_dir.exists()
        record_run_config(run_dir, recipe_cls, config, {"config_file": config_file, "overrides": overrides,
                                                        "data_path": data_path,
                                                        "resumed_from": str(checkpoint) if checkpoint else None})
    return TrainingPlan(recipe=recipe_cls(config), run_dir=run_dir, resume_checkpoint=checkpoint, is_main=is_main,
                        overrides=overrides, created_run_dir=created)


def record_run_config(run_dir: Path, recipe_cls: type[Recipe], config: Any, extra: dict[str, Any]) -> None:
    """Make `run_dir` and write its config.yaml: the recipe, the resolved config and `extra` (overrides, the
    pinned data path, where it resumed from, ...)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, recipe_cls.name, config, extra)


def start_run(recipe: Recipe, run_dir: str | Path, *, overrides: list[str] | None = None, source: str | None = None,
              show_progress: bool = False) -> TrainResult:
    """Train a recipe object built in Python (a script, `train_from_iterator`) into `run_dir`, recorded as
    `genflow train` records a run (config, overrides, pinned data path), so `sample`, `eval`, `export` and
    `--resume` treat it alike. `source`: what made the run, kept in config.yaml."""
    from genflow.engine.trainer import train

    run_dir = Path(run_dir)
    extra: dict[str, Any] = {"overrides": list(overrides or []), "data_path": pin_data_path(type(recipe), recipe.config)}
    if source is not None:
        extra["source"] = source
    record_run_config(run_dir, type(recipe), recipe.config, extra)
    return train(recipe, run_dir, show_progress=show_progress)


def _take_ckpt_path(overrides: list[str], resume: str | None) -> str | None:
    """The source trainers' `ckpt_path=FILE` / `resume_from_checkpoint=FILE` override means `--resume FILE`;
    it is removed from `overrides`."""
    for item in list(overrides):
        key, _, value = item.partition("=")
        if key in ("ckpt_path", "resume_from_checkpoint"):
            overrides.remove(item)
            if resume is not None:
                raise ConfigError(f"{key}=... and --resume both given; pass one of them")
            resume = value
            if not resume:
                raise ConfigError(f"{key}: expected a checkpoint file (RUN/checkpoints/last.pt) or a run directory")
    return resume


def _config_file_record(recipe_cls: type[Recipe], path: Path) -> str:
    """How config.yaml names the YAML a run started from (`config_file`): one of the recipe's own configs by its
    name, which `--config NAME` takes and which stays valid when genflow moves; any other file by its absolute path.
    `genflow runs ls` compares the run's config with this YAML to show what the run changed."""
    resolved = Path(path).resolve()
    shipped = recipe_cls.card.configs if recipe_cls.card is not None else ()
    return next((config.stem for config in shipped if Path(config).resolve() == resolved), str(resolved))
