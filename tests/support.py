"""Test helpers shared by several test modules (import them with `from support import ...`; fixtures
stay in conftest.py): a toy recipe for engine tests and the overrides of a tiny digit4 model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from genflow.engine import TrainConfig
from genflow.engine.recipe import Recipe, StepContext

# digit4 overrides for a model that trains in seconds (CLI tests)
# (train.threads=1: a fixed count, so two runs a test compares never differ by the threads the engine chose)
TINY_MODEL = ["model.latent_dim=16", "model.encoder_hidden=[16,32]", "model.field_hidden=32", "model.field_depth=2",
              "model.time_dim=16", "train.batch_size=8", "train.log_every=2", "eval.num_clouds=8", "eval.steps=4",
              "train.threads=1"]


class DictDataset(Dataset):
    def __init__(self, **arrays: torch.Tensor):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, batch_size=8, lr=1e-2, eval_every=1,
                                                                     checkpoint_every=1, log_every=1, grad_clip=1.0))
    samples: int = 64
    fail_at_step: int = -1  # make the loss NaN at this step
    interrupt_at_step: int = -1  # raise KeyboardInterrupt at this step


class ToyRecipe(Recipe):
    """Flow matching of a 2-D two-cluster distribution with a small MLP: noise comes from the context."""

    name = "toy"
    summary = "engine test recipe"
    config_class = ToyConfig

    def build_datasets(self):
        g = torch.Generator().manual_seed(0)
        centres = torch.tensor([[2.0, 0.0], [-2.0, 1.0]])
        x = centres[torch.randint(0, 2, (self.config.samples,), generator=g)] + 0.1 * torch.randn(self.config.samples, 2, generator=g)
        return DictDataset(x=x), DictDataset(x=x[:16])

    def build_model(self):
        return nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def compute_loss(self, model, batch, ctx: StepContext):
        if ctx.step == self.config.interrupt_at_step:
            raise KeyboardInterrupt
        x1 = batch["x"]
        x0 = ctx.randn(len(x1), 2)
        t = ctx.rand(len(x1), 1)
        pred = model(torch.cat([(1 - t) * x0 + t * x1, t], dim=1))
        loss = ((pred - (x1 - x0)) ** 2).mean()
        if ctx.step == self.config.fail_at_step:
            loss = loss * float("nan")
        return loss, {}


def draw_digit_images(n: int, seed: int = 0) -> np.ndarray:
    """Synthetic 28x28 uint8 images of a '4'-like stroke pattern with random offsets (test data only)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        dx, dy = rng.integers(-2, 3, size=2)
        images[i, 5 + dy : 16 + dy, 8 + dx : 10 + dx] = 255  # left stroke
        images[i, 14 + dy : 16 + dy, 8 + dx : 20 + dx] = 255  # bar
        images[i, 5 + dy : 24 + dy, 17 + dx : 19 + dx] = 255  # right stroke
    return images
