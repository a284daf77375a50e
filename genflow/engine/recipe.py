"""What a recipe supplies to the engine, and how genflow finds recipes.

A recipe builds the model and datasets, computes the loss of a batch, evaluates, samples and draws
its pictures. It does not checkpoint, log, handle mixed precision or show progress: the engine does.

A recipe also declares what `genflow sample RUN key=value` and `genflow eval NAME RUN key=value`
accept: `sample_options` and each `@evaluation(NAME, OptionsClass)` method take one options dataclass
(fields commented with their help line), so the CLI type-checks, suggests and lists them with no
recipe-specific code.

Recipes are found through the `genflow.recipes` entry-point group (see pyproject.toml), so a user's
own package can add recipes without touching genflow; each declares a torch-free `RecipeCard`
(`genflow.engine.card`) that names it and its configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from genflow.config import PositiveInt, check_ranges
from genflow.engine.card import RecipeCard
from genflow.errors import GenflowError

__all__ = ["Recipe", "StepContext", "SampleOptions", "EvalOptions", "OdeSolverOptions", "evaluation", "available_recipes", "get_recipe"]


@dataclass
class SampleOptions:
    """`genflow sample RUN key=value`: what every recipe's sampling takes (a recipe subclasses it)."""

    n: PositiveInt = 16  # how many samples (conditioning scenes / sequences where the recipe conditions)
    seed: int = 0  # seed of the sampling noise
    out: str | None = None  # output .png (arrays alongside); default RUN/samples/...

    def __post_init__(self) -> None:  # the declared ranges of every field, a subclass's too (the CLI checks them on reading)
        check_ranges(self)


@dataclass
class EvalOptions:
    """`genflow eval NAME RUN key=value`: what every evaluation takes (a recipe subclasses it)."""

    # test: the reported figures; val: what best.pt was chosen on; train
    split: Literal["test", "val", "train"] = "test"
    limit: PositiveInt | None = None  # evaluate on at most this many samples / scenes / sequences
    seed: int = 0  # seed of the sampling noise

    def __post_init__(self) -> None:  # as SampleOptions
        check_ranges(self)


@dataclass
class OdeSolverOptions:
    """Sampler choice of a flow-matching / diffusion recipe (mixed into its sample and eval options)."""

    steps: PositiveInt | None = None  # solver / sampler steps (default: the run config's)
    solver: str | None = None  # ODE solver euler | midpoint | rk4 | dopri5, or diffusion sampler ddim | ddpm (default: the run config's)


def evaluation(name: str, options: type = EvalOptions) -> Callable:
    """Mark a recipe method as `genflow eval NAME RUN`: `method(model, run_dir, device, options) -> dict`."""

    def mark(method: Callable) -> Callable:
        method.genflow_evaluation = (name, options)
        return method

    return mark


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
    # True for the engine's validation loss: `step` / `epoch` are then the training progress reached, and a
    # recipe whose objective changes with it (a KL warm-up, a schedule) validates the same way at every evaluation
    validating: bool = False

    def _rows(self, draw, local_batch: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        full = draw((local_batch * self.world_size, *shape), generator=self.generator, dtype=dtype)
        rows = full[self.rank * local_batch : (self.rank + 1) * local_batch]
        if self.device.type == "cuda":  # from pinned memory the copy is queued: the host does not wait for the GPU
            return rows.pin_memory().to(self.device, non_blocking=True)
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

    # The recipe's card: sets `name`, `summary`, `default_config` and `aliases` below (a recipe without
    # one sets them itself, and `genflow recipes` then imports it to list it)
    card: ClassVar[RecipeCard | None] = None
    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type]
    default_config: ClassVar[Path]  # the recipe's default YAML
    sample_options: ClassVar[type] = SampleOptions  # what `sample` takes
    # `genflow eval NAME RUN`: name -> (options class, method name), gathered from @evaluation methods
    # (inherited ones included, the first declared is the recipe's main evaluation)
    evaluations: ClassVar[dict[str, tuple[type, str]]] = {}
    aliases: ClassVar[tuple[str, ...]] = ()  # other names `genflow train` accepts (e.g. a source config name)
    # TensorBoard tag for a logged value, keyed "kind/name" (e.g. {"train/loss": "train_loss"});
    # unlisted values keep "kind/name". metrics.jsonl always uses the plain names.
    tensorboard_tags: ClassVar[dict[str, str]] = {}
    # Also keep the best checkpoint under this name, formatted with epoch, metric, value
    # (e.g. "epoch{epoch:03d}-{metric}{value:.4f}"); `best.pt` is always written.
    best_checkpoint_name: ClassVar[str | None] = None
    compare_metrics: ClassVar[tuple[str, ...]] = ()  # what `genflow eval compare` tabulates and plots
    compare_defaults: ClassVar[dict[str, Any]] = {}  # main-evaluation options `eval compare` starts from
    # Dotted config key of the dataset directory. A run records it absolutely (and as given), so
    # `sample` / `eval` / `export` work from any directory; `eval RUN data.data_dir=NEW` follows moved data.
    data_path_key: ClassVar[str | None] = "data.data_dir"

    def __init__(self, config: Any):
        self.config = config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        card = vars(cls).get("card")
        if card is not None:
            cls.name, cls.summary, cls.default_config, cls.aliases = card.name, card.summary, card.default_config, card.aliases
        found = dict(cls.evaluations)
        for attr, value in vars(cls).items():
            if hasattr(value, "genflow_evaluation"):
                name, options = value.genflow_evaluation
                found[name] = (options, attr)
        cls.evaluations = found

    @classmethod
    def config_file(cls, given: str | Path | None) -> Path:
        """The YAML that `--config given` means: the default when None, a path, or one of the card's configs by name."""
        if given is None:
            return cls.default_config
        return cls.card.resolve_config(given) if cls.card is not None else Path(given)

    # --- training ------------------------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        """(train, validation) datasets of dicts of tensors; validation may be None."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
                     ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Scalar loss of one (per-process) batch and extra scalars to log (e.g. loss terms).

        Give the extras as detached 0-dim tensors (`term.detach()`), not `term.item()` / `float(term)`: the
        engine sums them on their device and reads them only at log points, while reading a number off a GPU
        makes the host wait for the GPU, every step. Python numbers (e.g. a thread count) are accepted too.
        A key given at some batches only is averaged over all the window's batches.
        """
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
    def sample(self, model: nn.Module, run_dir: Path, device: torch.device, options: Any) -> dict[str, Any]:
        """Generate from a trained model (`options`: a `sample_options`); returns what was written / measured."""
        raise GenflowError(f"recipe '{self.name}' does not support sampling")

    def options(self, command: str, values: list[str] | None = None) -> Any:
        """The options of `sample` or of evaluation `command`, from `key=value` strings (type-checked)."""
        from genflow.config import load_options

        if command == "sample":
            return load_options(self.sample_options, list(values or []), f"{self.name} sample option")
        return load_options(self.evaluation(command)[0], list(values or []), f"{self.name} eval {command} option")

    def evaluation(self, name: str) -> tuple[type, Callable]:
        """(options class, bound method) of evaluation `name`; an unknown name is one clear error."""
        if name not in self.evaluations:
            have = ", ".join(self.evaluations) or "none"
            raise GenflowError(f"recipe '{self.name}' has no '{name}' evaluation (it has: {have})")
        options, attr = self.evaluations[name]
        return options, getattr(self, attr)

    def run_eval(self, name: str, model: nn.Module, run_dir: Path, device: torch.device, options: Any = None) -> dict[str, Any]:
        """Run evaluation `name` with `options` (its options dataclass; None: the defaults)."""
        options_class, method = self.evaluation(name)
        return method(model, run_dir, device, options if options is not None else options_class())

    def compare_settings(self) -> list[tuple[str, int]]:
        """(sampler, steps) pairs `genflow eval compare` sets as `solver` / `steps` of the main evaluation."""
        raise GenflowError(f"recipe '{self.name}' has no sampler comparison")

    def export_graphs(self, model: nn.Module) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], list[str], list[str], dict]]:
        """ONNX export: name -> (module, example inputs, input names, output names, dynamic axes)."""
        raise GenflowError(f"recipe '{self.name}' does not support ONNX export")

    def model_card(self) -> dict[str, Any]:
        """Hyper-parameters a user needs to rebuild the model elsewhere (saved with exports)."""
        model_cfg = getattr(self.config, "model", None)
        return dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else {}


def available_recipes() -> dict[str, type[Recipe]]:
    """All installed recipes by name (entry-point group `genflow.recipes`; this imports every one of them)."""
    from genflow.engine.catalog import recipe_entries

    return {entry.name: entry.load() for entry in recipe_entries()}


def get_recipe(name: str) -> type[Recipe]:
    """The recipe called `name` (or with `name` among its aliases); only that recipe is imported."""
    from genflow.engine.catalog import find_recipe

    return find_recipe(name).load()
