"""rings: flow matching on 2-D points drawn from concentric rings — the smallest complete genflow recipe.

    genflow data make rings n=4000           # a data maker: options dataclass + function, registered
    genflow train rings                       # config dataclasses below, defaults in configs/rings.yaml
    genflow sample RUN n=500 steps=20         # sample options
    genflow eval ring RUN                     # an evaluation, beside its baseline

Everything genflow needs is declared here and registered in this package's pyproject.toml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from genflow.config import NonNegative, NonNegativeInt, PositiveInt, Range, check_ranges
from genflow.engine import EvalOptions, Recipe, SampleOptions, StepContext, TrainConfig, evaluation
from genflow.data import ShardDataset, ShardWriter, load_split, split_indices
from genflow.data.registry import DataCommand, DataJob
from genflow.models import VectorVelocityField
from genflow.objectives import AffinePath, FlowMatchingObjective, make_scheduler
from genflow.samplers import solve_ode
from genflow_rings import CARD


# --- data: `genflow data make rings` ---------------------------------------------------------------------
@dataclass
class RingDataOptions:
    out: str = "datasets/rings"  # output dataset directory
    n: Annotated[int, Range(ge=10)] = 4000  # points in all (80 / 10 / 10 train / val / test)
    radii: Annotated[tuple[float, ...], Range(ge=0)] = (2.0, 4.0)  # ring radii
    noise: NonNegative = 0.05  # standard deviation of the radial noise
    seed: NonNegativeInt = 0  # seed of the points and the split
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        check_ranges(self)  # the declared ranges, also for options built in Python (the CLI checks them on reading)


def make_rings(options: RingDataOptions, job: DataJob) -> dict[str, Any]:
    rng = np.random.default_rng(options.seed)
    radius = rng.choice(np.asarray(options.radii), size=options.n) + options.noise * rng.standard_normal(options.n)
    angle = rng.uniform(0, 2 * np.pi, size=options.n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    splits = split_indices(rng.permutation(options.n), val_fraction=0.1, test_fraction=0.1)
    with ShardWriter(options.out, {"point": ((2,), "float32")}, seed=options.seed, overwrite=options.overwrite,
                     source={"generator": "genflow_rings", "command": job.command},
                     attrs={"radii": list(options.radii), "noise": options.noise}) as writer:
        for split, rows in splits.items():
            writer.write(split, point=points[np.sort(rows)])
    return {"dataset": Path(options.out)}


MAKE_RINGS = DataCommand("rings", "2-D points on concentric rings -> shards", RingDataOptions, make_rings)


# --- config ------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    data_dir: str = "datasets/rings"  # made by `genflow data make rings`


@dataclass
class ModelConfig:
    hidden: PositiveInt = 64  # width of the velocity field's residual stream
    depth: PositiveInt = 2  # residual AdaLN blocks


@dataclass
class EvalConfig:
    steps: PositiveInt = 20  # Euler steps of the sampling ODE


@dataclass
class RingsConfig:
    data: DataConfig = field(default_factory=DataConfig)  # where the points are
    model: ModelConfig = field(default_factory=ModelConfig)  # the velocity field
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256, lr=2e-3, eval_every=1,
                                                                   best_metric="ring_error"))  # engine settings
    eval: EvalConfig = field(default_factory=EvalConfig)  # sampling for the val metric


# --- options of `genflow sample` and `genflow eval ring` --------------------------------------------------------
@dataclass
class RingSampleOptions(SampleOptions):
    n: PositiveInt = 500  # how many points
    steps: PositiveInt | None = None  # Euler steps (default: eval.steps)


@dataclass
class RingEvalOptions(EvalOptions):
    steps: PositiveInt | None = None  # Euler steps (default: eval.steps)


def ring_error(points: torch.Tensor, radii: list[float]) -> float:
    """Mean distance of each point's radius to the nearest ring."""
    gaps = (points.norm(dim=1, keepdim=True) - torch.tensor(radii)).abs()
    return float(gaps.min(dim=1).values.mean())


class RingsRecipe(Recipe):
    card = CARD  # name, summary, configs: declared once, in the torch-free __init__.py
    config_class = RingsConfig
    sample_options = RingSampleOptions

    def __init__(self, config: RingsConfig):
        super().__init__(config)
        self.objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")))

    def build_datasets(self):
        d = self.config.data.data_dir
        return ShardDataset(d, "train", ["point"], in_memory=True), ShardDataset(d, "val", ["point"], in_memory=True)

    def build_model(self):
        return VectorVelocityField(2, hidden=self.config.model.hidden, depth=self.config.model.depth)

    def compute_loss(self, model, batch, ctx: StepContext):
        x1 = batch["point"]
        x0, t = ctx.randn(len(x1), 2), ctx.rand(len(x1))
        sample = self.objective.path.sample(x0=x0, x1=x1, t=t)
        return self.objective.loss(model(sample.x_t, t).float(), sample, x0=x0, x1=x1), {}

    @torch.no_grad()
    def generate(self, model, n: int, steps: int, seed: int) -> torch.Tensor:
        x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        return solve_ode(lambda x, t: model(x, t.expand(len(x))).float(), x0, steps=steps, solver="euler")

    def radii(self) -> list[float]:
        from genflow.data import read_manifest

        return read_manifest(self.config.data.data_dir)["attrs"]["radii"]

    def evaluate(self, model, val_data, device):
        return {"ring_error": ring_error(self.generate(model, 500, self.config.eval.steps, seed=0), self.radii())}

    def sample(self, model, run_dir, device, options: RingSampleOptions):
        points = self.generate(model, options.n, options.steps or self.config.eval.steps, options.seed).numpy()
        out = Path(options.out) if options.out else Path(run_dir) / "samples" / "rings.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out.with_suffix(".npz"), points=points)
        return {"arrays": out.with_suffix(".npz"), "points": len(points)}

    @evaluation("ring", RingEvalOptions)
    def eval_ring(self, model, run_dir, device, options: RingEvalOptions):
        """Ring error of generated points beside the Gaussian the flow starts from and the held-out points."""
        held_out = torch.from_numpy(load_split(self.config.data.data_dir, options.split, ["point"])["point"][:options.limit])
        generated = self.generate(model, len(held_out), options.steps or self.config.eval.steps, options.seed)
        noise = torch.randn(len(held_out), 2, generator=torch.Generator().manual_seed(options.seed))
        radii = self.radii()
        return {"split": options.split, "points": len(held_out), "model_ring_error": ring_error(generated, radii),
                "gaussian_ring_error": ring_error(noise, radii), "data_ring_error": ring_error(held_out, radii)}
