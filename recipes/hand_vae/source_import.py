"""`genflow runs import smplx-pose-priors CKPT`: a hand VAE trained by smplx-pose-priors, as a hand-vae run.

The source's `train_hand_vae_lightning.py` writes Lightning checkpoints (`hand_vae_epoch=XX_...ckpt`
top-3 by `val/loss`, and `last.ckpt`) whose `hyper_parameters` hold its flags (`model_type`, `z_dim`,
`hidden`, `n_layers`, `dropout`, `learning_rate`, ...) and whose `state_dict` keeps the model under
`model.`. This reads one without the source's code (`load_foreign_checkpoint`: tensors load, any other
object becomes an inert placeholder), builds hand-vae's `hand_vae_source` config with those flags,
ports the weights by name (:func:`~genflow_recipes.hand_vae.model.source_parameter_names`) and writes
a run that `genflow eval hands`, `sample` and `export` take.

Which checkpoint, given a directory: `checkpoint=NAME` if given; else the best one its ModelCheckpoint
recorded (`best_model_path` in `last.ckpt`'s callback state; the source's file names carry no score,
as they format a `val_loss` key its logs never hold), else `last.ckpt`.

`pipeline`: `shipped` (default) for a checkpoint of the source as published, whose data module
standardises the poses before its model standardises them again (and whose so3 model reads those
numbers as radians): the model's statistics are then also put in front of it as the data module's, so
the run computes on raw poses what the source computed. `intended` for a checkpoint trained on raw
poses (standardised once, inside the model), as `benchmarks/parity/hand_vae_source_driver.py` trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from genflow.engine import RunImporter
from genflow.errors import CheckpointError

__all__ = ["IMPORT_SMPLX_POSE_PRIORS_RUN", "SourceCheckpointOptions", "import_source_checkpoint"]

# the source's flags and the keys of hand-vae's config they set
_FLAGS = {"model_type": "model.model_type", "z_dim": "model.z_dim", "hidden": "model.hidden", "n_layers": "model.layers",
          "dropout": "model.dropout", "learning_rate": "train.lr", "weight_decay": "train.weight_decay",
          "kl_warmup_epochs": "loss.kl_warmup_epochs", "beta_max": "loss.beta_max", "free_bits": "loss.free_bits",
          "grad_clip_val": "train.grad_clip"}


@dataclass
class SourceCheckpointOptions:
    name: str | None = None  # run name under runs_dir/hand-vae/ (default: smplx-<checkpoint file's stem>)
    runs_dir: str = "runs"  # root of run directories
    checkpoint: str | None = None  # given a directory: the .ckpt in it (default: its ModelCheckpoint's best, else last.ckpt)
    # shipped: trained by the source as published (poses standardised twice); intended: standardised once, in the model
    pipeline: Literal["shipped", "intended"] = "shipped"
    data_dir: str = "datasets/hands"  # genflow shards the run evaluates on (genflow data import hands ...)


def _pick_checkpoint(source: Path, chosen: str | None) -> Path:
    from genflow.engine import candidate_checkpoints, load_foreign_checkpoint

    if source.is_file():
        return source
    files = candidate_checkpoints(source, chosen, what_writes_them="the source's ModelCheckpoint writes them into its checkpoint_dir")
    last = source / "last.ckpt"
    if chosen or not last.is_file():
        return files[-1]
    state, _ = load_foreign_checkpoint(last)
    for key, value in (state.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("best_model_path"):
            best = source / Path(str(value["best_model_path"])).name
            if best.is_file():
                return best
    return last


def import_source_checkpoint(source: str | Path, options: SourceCheckpointOptions) -> dict[str, Any]:
    """Write a hand-vae run of the smplx-pose-priors checkpoint (or checkpoint directory) `source`."""
    from genflow.config import load_config
    from genflow.engine import get_recipe, load_foreign_checkpoint, ported_summary, write_imported_run
    from genflow_recipes.hand_vae.model import source_parameter_names

    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: not found (expected a smplx-pose-priors .ckpt or its checkpoint directory)")
    checkpoint = _pick_checkpoint(source, options.checkpoint)
    state, placeholders = load_foreign_checkpoint(checkpoint)
    tensors, flags = state.get("state_dict"), state.get("hyper_parameters")
    if not isinstance(tensors, dict) or not isinstance(flags, dict):
        raise CheckpointError(f"{checkpoint}: no 'state_dict' and 'hyper_parameters' entries (not a Lightning checkpoint "
                              f"of train_hand_vae_lightning.py?)")
    if flags.get("model_type") not in ("standard", "so3"):
        raise CheckpointError(f"{checkpoint}: hyper_parameters.model_type is {flags.get('model_type')!r}; expected "
                              f"'standard' or 'so3'")
    overrides = [f"{ours}={flags[theirs]}" for theirs, ours in _FLAGS.items() if flags.get(theirs) is not None]
    recipe_cls = get_recipe("hand-vae")
    config = load_config(recipe_cls.config_class, recipe_cls.config_file("hand_vae_source"),
                         overrides + [f"data.data_dir={options.data_dir}"])
    recipe = recipe_cls(config)
    names = source_parameter_names(recipe.build_model())
    absent = [f"model.{theirs}" for theirs in names.values() if f"model.{theirs}" not in tensors]
    if absent:
        raise CheckpointError(f"{checkpoint}: state_dict lacks {len(absent)} of the {flags['model_type']} model's tensors "
                              f"(e.g. {', '.join(absent[:3])}); is it a hand VAE of smplx-pose-priors with these sizes?")
    weights = {ours: tensors[f"model.{theirs}"].float() for ours, theirs in names.items()}
    if options.pipeline == "shipped":  # the data module's standardisation, with the same statistics as the model's
        weights["pose_mean"], weights["pose_std"] = weights["input_mean"].clone(), weights["input_std"].clamp_min(1e-6)
    else:
        weights["pose_mean"], weights["pose_std"] = torch.zeros_like(weights["input_mean"]), torch.ones_like(weights["input_std"])
    ignored = sorted(set(tensors) - {f"model.{theirs}" for theirs in names.values()})
    epoch, step = (value if isinstance(value, int) else None for value in (state.get("epoch"), state.get("global_step")))
    name = options.name or f"smplx-{checkpoint.stem.replace('=', '-')}"
    imported_from = {"codebase": "smplx-pose-priors", "checkpoint": str(checkpoint.resolve()), "pipeline": options.pipeline,
                     "epoch": epoch, "global_step": step, "lightning_version": str(state.get("pytorch-lightning_version")),
                     "hyper_parameters": {k: v for k, v in flags.items() if isinstance(v, (int, float, str, bool))},
                     "config_overrides": overrides, "placeholders": placeholders, "ignored_tensors": ignored}
    run_dir = write_imported_run(recipe=recipe, weights=weights, runs_root=options.runs_dir, name=name,
                                 imported_from=imported_from, progress={"epoch": epoch or 0, "step": step or 0})
    return {"run": str(run_dir), "model": f"{flags['model_type']} (z {flags.get('z_dim')}, hidden {flags.get('hidden')}, "
            f"{flags.get('n_layers')} layers)", "checkpoint": str(checkpoint), "pipeline": options.pipeline,
            "epoch / step": f"{epoch} / {step}", **ported_summary(weights, ignored, placeholders),
            "next": f"genflow eval hands {run_dir}   |   genflow sample {run_dir}"}


def _import_run(options: SourceCheckpointOptions, source: Path) -> dict[str, Any]:
    return import_source_checkpoint(source, options)


IMPORT_SMPLX_POSE_PRIORS_RUN = RunImporter(
    "smplx-pose-priors", "a hand VAE checkpoint of smplx-pose-priors (Lightning .ckpt, standard or so3) -> a hand-vae run",
    SourceCheckpointOptions, _import_run,
    source="a .ckpt written by its train_hand_vae_lightning.py, or the directory holding them")
