"""What a recipe supplies to the engine, and how genflow finds recipes.

A recipe builds the model and datasets, computes the loss of a batch, evaluates, samples and draws
its pictures. It does not checkpoint, log, handle mixed precision or show progress: the engine does.

Recipes are found through the `genflow.recipes` entry-point group (see pyproject.toml), so a user's
own package can add recipes without touching genflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from genflow.errors import GenflowError

__all__ = ["Recipe", "StepContext", "available_recipes", "get_recipe"]


@dataclass
class StepContext:
    """Per-step facts and randomness handed to `Recipe.compute_loss`.

    Randomness comes from a generator seeded by (seed, micro-step), not from the global RNG, so a
    resumed run draws exactly the noise it would have drawn, and N processes draw together exactly
    the noise one process would draw for the same global batch (each process takes its rows).
    """

    step: int  # optimiser steps done so far
    micro_step: int  # batches seen so far (== step without gradient accumulation)
    epoch: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    generator: torch.Generator | None = None

    def _rows(self, draw, local_batch: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        full = draw((local_batch * self.world_size, *shape), generator=self.generator, dtype=dtype)
        rows = full[self.rank * local_batch : (self.rank + 1) * local_batch]
        return rows.to(self.device)

    def randn(self, local_batch: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise `(local_batch, *shape)` for this process's rows of the global batch."""
        return self._rows(torch.randn, local_batch, shape, dtype)

    def rand(self, local_batch: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) noise `(local_batch, *shape)` for this process's rows of the global batch."""
        return self._rows(torch.rand, local_batch, shape, dtype)


class Recipe:
    """Base class of a training recipe. Subclasses set the class attributes and override methods.

    The model's `forward` must be what `compute_loss` calls (once per batch): under several
    processes the engine wraps the model in DistributedDataParallel, which synchronises gradients
    only for computation that goes through `forward`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type]
    default_config: ClassVar[Path]  # the recipe's default YAML
    eval_metrics: ClassVar[tuple[str, ...]] = ()  # names accepted by `genflow eval NAME RUN_DIR`
    aliases: ClassVar[tuple[str, ...]] = ()  # other names `genflow train` accepts (e.g. a source config name)
    # TensorBoard tag for a logged value, keyed "kind/name" (e.g. {"train/loss": "train_loss"});
    # unlisted values keep "kind/name". metrics.jsonl always uses the plain names.
    tensorboard_tags: ClassVar[dict[str, str]] = {}
    # Also keep the best checkpoint under this name, formatted with epoch, metric, value
    # (e.g. "epoch{epoch:03d}-{metric}{value:.4f}"); `best.pt` is always written.
    best_checkpoint_name: ClassVar[str | None] = None
    compare_metrics: ClassVar[tuple[str, ...]] = ()  # what `genflow eval compare` tabulates and plots
    # Dotted config key of the dataset directory. A run records it absolutely (and as given), so
    # `sample` / `eval` / `export` work from any directory; `eval RUN data.data_dir=NEW` follows moved data.
    data_path_key: ClassVar[str | None] = "data.data_dir"

    def __init__(self, config: Any):
        self.config = config

    # --- training ------------------------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(train, validation) datasets of dicts of tensors; validation may be None."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss of one (per-process) batch and extra scalars to log (e.g. loss terms)."""
        raise NotImplementedError

    def parameter_groups(self, model: nn.Module) -> list[dict] | None:
        """Optimiser parameter groups with their own "lr" / "weight_decay" (None: one group)."""
        return None

    def evaluate(self, model: nn.Module, val_data: Dataset | None, device: torch.device) -> dict[str, float]:
        """Metrics beyond the validation loss, computed on the main process every `eval_every` epochs."""
        return {}

    def save_figures(self, model: nn.Module, val_data: Dataset | None, run_dir: Path, device: torch.device) -> dict[str, Path]:
        """Write the recipe's pictures into the run dir (e.g. samples.png); returns name -> path."""
        return {}

    # --- after training: `genflow sample | eval | export` ----------------------------------------
    def sample(self, model: nn.Module, run_dir: Path, device: torch.device, **options: Any) -> dict[str, Any]:
        """Generate from a trained model; returns what was written / measured for the CLI to print."""
        raise GenflowError(f"recipe '{self.name}' does not support sampling")

    def run_eval(self, metric: str, model: nn.Module, run_dir: Path, device: torch.device, **options: Any) -> dict[str, Any]:
        raise GenflowError(f"recipe '{self.name}' has no '{metric}' evaluation (it has: {', '.join(self.eval_metrics) or 'none'})")

    def compare_settings(self) -> list[tuple[str, int]]:
        """(sampler, steps) pairs `genflow eval compare` evaluates with `run_eval(eval_metrics[0], ...)`."""
        raise GenflowError(f"recipe '{self.name}' has no sampler comparison")

    def export_graphs(self, model: nn.Module) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str], dict]]:
        """ONNX export: name -> (module, example inputs, input names, output names, dynamic axes)."""
        raise GenflowError(f"recipe '{self.name}' does not support ONNX export")

    def model_card(self) -> dict[str, Any]:
        """Hyper-parameters a user needs to rebuild the model elsewhere (saved with exports)."""
        model_cfg = getattr(self.config, "model", None)
        return dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else {}


def available_recipes() -> dict[str, type[Recipe]]:
    """All installed recipes by name (entry-point group `genflow.recipes`)."""
    found: dict[str, type[Recipe]] = {}
    for ep in entry_points(group="genflow.recipes"):
        found[ep.name] = ep.load()
    return dict(sorted(found.items()))


def get_recipe(name: str) -> type[Recipe]:
    """The recipe called `name` (or with `name` among its aliases)."""
    recipes = available_recipes()
    for cls in recipes.values():
        if name in cls.aliases:
            return cls
    if name not in recipes:
        import difflib

        close = difflib.get_close_matches(name, list(recipes), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(recipes) or 'none installed'}"
        raise GenflowError(f"unknown recipe '{name}': {hint} (see `genflow recipes`)")
    return recipes[name]
