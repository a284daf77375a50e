"""Faults during training: a loss that blows up, a model the config cannot build, a full disk, the debris
of a killed checkpoint write. Each ends in one clear error and leaves what the user had intact."""

import errno
import math
import os
import signal

import pytest
import torch

import genflow.engine.checkpoint as checkpoint_module
from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.metrics_log import read_metrics
from genflow.engine.trainer import PREEMPTED_EXIT_CODE, TrainingDiverged, TrainingPreempted, train
from genflow.errors import CheckpointError, ConfigError
from support import ToyConfig, ToyRecipe


class UnstableToy(ToyRecipe):
    """The toy's loss times a factor that explodes once any weight passes 2 and is computed in fp16's range
    (inf past 65504): at a high learning rate the loss grows for a few steps, then overflows."""

    def compute_loss(self, model, batch, ctx):
        loss, extras = super().compute_loss(model, batch, ctx)
        excess = max(p.abs().max() for p in model.parameters()) - 2.0
        return loss * torch.exp(8 * torch.relu(excess)).half().float(), extras


def unstable(lr: float, epochs: int = 12) -> UnstableToy:
    cfg = ToyConfig()
    cfg.train.epochs, cfg.train.lr, cfg.train.warmup_steps, cfg.train.grad_clip = epochs, lr, 40, None
    cfg.train.precision, cfg.train.log_with = "no", None
    return UnstableToy(cfg)


def test_after_a_blow_up_last_good_is_from_before_it_and_a_lower_lr_continues_from_there(tmp_path):
    with pytest.raises(TrainingDiverged) as caught:
        train(unstable(lr=1.0), tmp_path, show_progress=False)
    good_path = tmp_path / "checkpoints" / "last_good.pt"
    assert f"--resume {good_path} train.lr=0.1" in str(caught.value)
    last, good = load_checkpoint(tmp_path / "checkpoints" / "last.pt"), load_checkpoint(good_path)
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"}
    largest_weight = {name: max(float(w.abs().max()) for w in c["model"].values()) for name, c in (("good", good), ("last", last))}
    assert largest_weight["good"] < 2.0 <= largest_weight["last"]  # last.pt holds weights past the stable region
    assert max(v for s, v in losses.items() if s <= last["progress"]["step"]) > 1000 * min(losses.values())  # written during the rise
    assert good["progress"]["step"] < last["progress"]["step"]

    again = tmp_path / "again"  # the same learning rate from last_good diverges again: the lower one is what helps
    with pytest.raises(TrainingDiverged):
        train(unstable(lr=1.0), again, resume_from=good_path, show_progress=False)
    lower = tmp_path / "lower"
    result = train(unstable(lr=1e-3), lower, resume_from=good_path, show_progress=False)
    assert result.steps == 96 and all(math.isfinite(r["loss"]) for r in read_metrics(lower) if r["kind"] == "train")
    resumed = load_checkpoint(lower / "checkpoints" / "last.pt")
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # the config's lr, not the checkpoint's


class UnbuildableToy(ToyRecipe):
    def build_model(self):
        return torch.nn.Linear(3, -2)  # what a negative width does inside torch


def test_a_model_the_config_cannot_build_is_one_config_error_and_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    with pytest.raises(ConfigError, match=r"could not build the model \(model\.\*\) from the config: RuntimeError"):
        train(UnbuildableToy(ToyConfig()), run_dir, show_progress=False, discard_failed_start=True)
    assert not run_dir.exists()


def test_a_full_disk_during_a_checkpoint_is_one_error_and_keeps_the_previous_checkpoint(toy_recipe, tmp_path, monkeypatch):
    train(toy_recipe(epochs=1), tmp_path, show_progress=False)
    before = load_checkpoint(tmp_path / "checkpoints" / "last.pt")

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoints/(last|best).pt: could not write the checkpoint \(No space left on device\); "
                                              r"the previous one is kept"):
        train(toy_recipe(epochs=2), tmp_path, resume_from=tmp_path / "checkpoints" / "last.pt", show_progress=False)
    monkeypatch.undo()
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept["progress"] == before["progress"]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_temp_files_of_a_killed_checkpoint_write_are_removed_on_the_next_start(toy_recipe, tmp_path):
    train(toy_recipe(epochs=1), tmp_path, show_progress=False)
    debris = [tmp_path / "checkpoints" / ".last.pt.k3j9x2.tmp", tmp_path / "checkpoints" / ".best.pt.a1b2c3.tmp"]
    for file in debris:
        file.write_bytes(b"half a checkpoint")
    train(toy_recipe(epochs=2), tmp_path, resume_from=tmp_path / "checkpoints" / "last.pt", show_progress=False)
    assert not any(file.exists() for file in debris)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["progress"]["epoch"] == 2


class DiesInFirstValidation(ToyRecipe):
    killed = True

    def evaluate(self, model, val_data, device):
        if self.killed:  # the process dies here, after the step checkpoint of the epoch's last batch
            raise SystemExit("killed")
        return {}


def test_a_kill_between_the_last_step_checkpoint_and_the_validation_is_made_up_on_resume(toy_recipe, tmp_path):
    recipe = DiesInFirstValidation(toy_recipe(epochs=2, checkpoint_every_steps=8).config)
    with pytest.raises(SystemExit):
        train(recipe, tmp_path, show_progress=False)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["progress"]["step"] == 8  # epoch 1 done, not validated
    recipe.killed = False
    train(recipe, tmp_path, resume_from=tmp_path / "checkpoints" / "last.pt", show_progress=False)
    assert [r["epoch"] for r in read_metrics(tmp_path) if r["kind"] == "val"] == [1, 2]


class PreemptedToy(ToyRecipe):
    """The scheduler's notice arrives while step `preempt_at` is being computed."""

    preempt_at = -1

    def compute_loss(self, model, batch, ctx):
        if ctx.step == self.preempt_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return super().compute_loss(model, batch, ctx)


def test_a_preemption_signal_finishes_the_step_writes_last_and_resume_is_exact(toy_recipe, tmp_path):
    straight = tmp_path / "straight"
    train(toy_recipe(epochs=2), straight, show_progress=False)
    recipe = PreemptedToy(toy_recipe(epochs=2).config)
    recipe.preempt_at = 5  # mid-epoch (8 steps per epoch)
    with pytest.raises(TrainingPreempted, match=r"SIGUSR1 received: stopped after step 6") as caught:
        train(recipe, tmp_path / "requeued", show_progress=False)
    assert caught.value.exit_code == PREEMPTED_EXIT_CODE == 75
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the engine's handler is gone again
    recipe.preempt_at = -1
    train(recipe, tmp_path / "requeued", resume_from=tmp_path / "requeued" / "checkpoints" / "last.pt", show_progress=False)
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, tmp_path / "requeued"))
    assert a["progress"] == b["progress"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
