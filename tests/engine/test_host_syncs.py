"""Between log points the training loop reads nothing off the device (no host sync per step): the loss and
the recipe's logged scalars stay there until a log point, and what is logged is unchanged."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from genflow.config import load_config
from genflow.engine.log_window import LogWindow
from genflow.engine.trainer import Trainer, train, validation_loss
from genflow.errors import GenflowError
from genflow_recipes.digit4.recipe import Digit4Config, Digit4Recipe
from support import TINY_MODEL

# What reads a tensor's value on the host: on a GPU each one waits for the GPU to finish its queue
HOST_READS = ("item", "__float__", "__int__", "__index__", "__bool__", "tolist", "cpu", "numpy")
# (file, function) of reads of tensors that live on the host by construction, never a device sync: Adam's step
# counters (capturable=False), the DataLoader's seeds and the batch sampler's indices
HOST_TENSORS = (("torch/optim/", "_get_value"), ("torch/utils/data/", None), ("genflow/engine/optim.py", "__iter__"))


@pytest.fixture
def host_reads(monkeypatch):
    """The host reads of tensors made while `host_reads.on` is true, as "read in file:line" strings."""

    class Reads(list):
        on = False

    reads = Reads()
    for name in HOST_READS:
        def spy(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            frame = sys._getframe(1)
            where = frame.f_code.co_filename.replace("\\", "/")
            host_side = any(part in where and function in (None, frame.f_code.co_name) for part, function in HOST_TENSORS)
            if reads.on and not host_side:
                reads.append(f"{_name} in {where}:{frame.f_lineno}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return reads


@pytest.fixture
def reads_per_step(monkeypatch, host_reads):
    """(the optimiser step the batch completed, or None, the host reads of its `train_step`) for each batch of a run."""
    steps: list[tuple[int | None, list[str]]] = []
    real_step = Trainer.train_step

    def counted(self, batch, epoch):
        before = self.state.step
        host_reads.clear()
        host_reads.on = True
        try:
            real_step(self, batch, epoch)
        finally:
            host_reads.on = False
        steps.append((self.state.step if self.state.step != before else None, list(host_reads)))

    monkeypatch.setattr(Trainer, "train_step", counted)
    return steps


def assert_reads_only_at_log_steps(steps: list[tuple[int | None, list[str]]], log_every: int) -> None:
    between = [(step, reads) for step, reads in steps if (step is None or step % log_every) and reads]
    assert not between, f"host syncs between log points: {between}"
    at_log = [reads for step, reads in steps if step is not None and step % log_every == 0]
    assert at_log and all(at_log), "the spies saw no read at log points: they no longer see the reads"


@pytest.mark.parametrize("options", [{}, {"grad_accum_steps": 2, "ema_decay": 0.9}])
def test_the_toy_recipe_syncs_only_at_log_steps(toy_recipe, tmp_path, reads_per_step, options):
    # 8 steps (4 with accumulation), clipping on; log points every 2 steps, the last among them
    train(toy_recipe(epochs=1, log_every=2, log_with="none", **options), tmp_path, show_progress=False)
    assert_reads_only_at_log_steps(reads_per_step, log_every=2)


def test_digit4_syncs_only_at_log_steps_and_logs_the_mean_of_its_terms(tmp_path, digit4_dir, reads_per_step):
    overrides = [f"data.path={digit4_dir}", *TINY_MODEL, "model.use_vae=true", "model.use_prior_flow=true",
                 "train.max_steps=4", "train.log_every=2", "train.log_with=none"]
    recipe = Digit4Recipe(load_config(Digit4Config, Digit4Recipe.default_config, overrides))
    terms: list[dict[str, torch.Tensor]] = []
    compute_loss = recipe.compute_loss

    def kept(model, batch, ctx):
        loss, extras = compute_loss(model, batch, ctx)
        terms.append(extras)
        return loss, extras

    recipe.compute_loss = kept
    train(recipe, tmp_path, show_progress=False)
    assert_reads_only_at_log_steps(reads_per_step, log_every=2)
    assert all(isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
               for extras in terms for value in extras.values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record for record in logged if record["kind"] == "train"]
    assert [record["step"] for record in logged] == [2, 4]
    for record, window in zip(logged, (terms[:2], terms[2:])):
        for key in ("flow_loss", "kl", "prior_loss"):
            assert record[key] == sum(extras[key].item() for extras in window) / 2  # as when recipes sent floats


def test_the_log_window_sums_tensors_and_numbers_and_refuses_a_non_scalar():
    window = LogWindow()
    values = [{"term": torch.tensor(0.25), "threads": 2, "beta": 0.5}, {"term": torch.tensor(1.5, dtype=torch.bfloat16),
              "threads": 3, "beta": 0.5, "task_a": torch.tensor(4.0)}]
    for step, extras in enumerate(values):
        window.add(torch.tensor(1.0), extras, step=step, epoch=0)
    means = window.values(window.host_losses(None), lr=1e-3, batch_size=8)
    # a key given at some batches only is divided by all the window's batches, as before
    assert {key: means[key] for key in ("term", "threads", "beta", "task_a")} == {"term": 0.875, "threads": 2.5, "beta": 0.5,
                                                                                  "task_a": 2.0}
    with pytest.raises(GenflowError, match="extra 'terms' of shape \\(2,\\): expected a scalar"):
        window.add(torch.tensor(1.0), {"terms": torch.ones(2)}, step=2, epoch=0)


def test_validation_loss_reads_the_device_once_and_is_the_mean_over_samples(toy_recipe, host_reads):
    recipe = toy_recipe(batch_size=4)
    _, val_data = recipe.build_datasets()  # 16 samples: 4 batches of 4
    model, losses, compute_loss = recipe.build_model(), [], recipe.compute_loss
    recipe.compute_loss = lambda model, batch, ctx: losses.append(compute_loss(model, batch, ctx)) or losses[-1]
    host_reads.on = True
    value = validation_loss(recipe, model, val_data, recipe.config.train, torch.device("cpu"), _Autocast(), step=0, epoch=0)
    host_reads.on = False
    assert len(host_reads) == 1 and "__float__" in host_reads[0]
    assert len(losses) == 4 and value == sum(loss.item() * 4 for loss, _ in losses) / 16  # as when read per batch


class _Autocast:
    """The part of an Accelerator that `validation_loss` uses."""

    def autocast(self):
        return torch.autocast("cpu", enabled=False)
