import json
import shutil

import pytest
import torch
import yaml

from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.trainer import TrainingDiverged, train
from genflow.errors import GenflowError


def weights(run_dir, name="last"):
    return load_checkpoint(run_dir / "checkpoints" / f"{name}.pt")


def assert_same_state(a, b):
    for key in ("model", "ema"):
        if a[key] is None:
            assert b[key] is None
            continue
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["progress"] == b["progress"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]), "the global torch RNG is not where an uninterrupted run leaves it"


def test_loss_goes_down_and_run_dir_is_complete(toy_recipe, tmp_path):
    result = train(toy_recipe(epochs=6), tmp_path, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    val = [r["val_loss"] for r in records if r["kind"] == "val"]
    assert result.steps == 6 * 8
    assert result.samples_seen == result.steps * toy_recipe().config.train.batch_size
    assert result.peak_memory_mib is None or result.peak_memory_mib > 10  # this process holds torch: tens of MiB at least
    assert sum(losses[-8:]) / 8 < 0.75 * sum(losses[:8]) / 8
    assert val[-1] < val[0]
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "epoch_0001.pt", "epoch_0006.pt"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (tmp_path / "loss_trajectory.png").stat().st_size > 0 and any((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("options", [{}, {"grad_accum_steps": 2, "ema_decay": 0.9, "lr_schedule": "cosine", "warmup_steps": 3}])
def test_resume_is_exact(toy_recipe, tmp_path, options):
    straight = tmp_path / "straight"
    train(toy_recipe(max_steps=10, **options), straight, show_progress=False)
    split = tmp_path / "split"
    train(toy_recipe(max_steps=5, **options), split, show_progress=False)  # stops mid-epoch
    assert weights(split)["progress"]["step"] == 5
    train(toy_recipe(max_steps=10, **options), split, resume_from=split / "checkpoints" / "last.pt", show_progress=False)
    assert_same_state(weights(straight), weights(split))
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert steps == sorted(set(steps)), "resumed metrics.jsonl repeats steps"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_recipe, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss became nan at step 11"):
        train(toy_recipe(fail_at_step=11), tmp_path, show_progress=False)
    kept = weights(tmp_path)
    assert kept["progress"]["step"] == 8  # end of epoch 1, the last checkpoint before the failure
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_interrupt_saves_position_and_resume_matches(toy_recipe, tmp_path):
    straight = tmp_path / "straight"
    train(toy_recipe(max_steps=12), straight, show_progress=False)
    broken = tmp_path / "broken"
    with pytest.raises(GenflowError, match="interrupted at step 6"):
        train(toy_recipe(max_steps=12, interrupt_at_step=6), broken, show_progress=False)
    train(toy_recipe(max_steps=12), broken, resume_from=broken / "checkpoints" / "last.pt", show_progress=False)
    assert_same_state(weights(straight), weights(broken))


def test_fp16_on_cpu_is_a_clear_error(toy_recipe, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is valid with CUDA")
    with pytest.raises(GenflowError, match="fp16 needs a CUDA GPU"):
        train(toy_recipe(precision="fp16"), tmp_path, show_progress=False)


def test_bf16_mixed_precision_trains(toy_recipe, tmp_path):
    # an explicit bf16 is bf16 on any CPU (only `auto` falls back to fp32 where bf16 is slow): the forward
    # of every training step computes in bf16, and the run records what it used
    recipe = toy_recipe(precision="bf16", epochs=2)
    build_model, seen = recipe.build_model, []

    def build_spied_model():  # the layers' outputs (the model's own output is handed back in fp32 by Accelerate)
        model = build_model()
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype) if module.training else None)
        return model

    recipe.build_model = build_spied_model
    result = train(recipe, tmp_path, show_progress=False)
    assert result.steps == 16 and torch.isfinite(torch.tensor(result.last_metrics["val_loss"]))
    assert seen == [torch.bfloat16] * 2 * 16  # two linear layers, 16 training steps
    runtime = yaml.safe_load((tmp_path / "config.yaml").read_text())["runtime"]
    assert (runtime["precision_requested"], runtime["precision"]) == ("bf16", "bf16")


def test_corrupt_checkpoint_is_a_clear_error(toy_recipe, tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GenflowError, match="last.pt: not a readable genflow checkpoint"):
        train(toy_recipe(), tmp_path, resume_from=bad, show_progress=False)


def test_the_loader_reads_whole_batches_the_same_with_or_without_workers(tmp_path):
    from genflow.data import ShardDataset, ShardWriter
    from genflow.engine.optim import EpochBatchSampler
    from genflow.engine.trainer import as_tensors, training_loader

    with ShardWriter(tmp_path / "ds", {"x": ((3,), "float32"), "label": ((), "int64")}, max_shard_bytes=200) as writer:
        writer.write("train", x=torch.arange(120.0).reshape(40, 3).numpy(), label=torch.arange(40).numpy())
    data = ShardDataset(tmp_path / "ds", "train")

    def epoch(workers):
        sampler = EpochBatchSampler(len(data), 8, seed=1, epoch=2)
        return [as_tensors(b) for b in training_loader(data, sampler, num_workers=workers, local_batch=8, seed=1, epoch=2)]

    alone, with_workers = epoch(0), epoch(2)
    assert len(alone) == 5 and all(b["x"].shape == (8, 3) and b["label"].dtype == torch.int64 for b in alone)
    for a, b in zip(alone, with_workers, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["label"], b["label"])
    assert torch.equal(torch.cat([b["label"] for b in alone]).sort().values, torch.arange(40))  # each sample once


def test_lr_decay_epochs_sets_the_cosine_span_whatever_the_run_length(toy_recipe, tmp_path):
    import math

    train(toy_recipe(epochs=2, lr=1.0, min_lr=0.2, lr_schedule="cosine", lr_decay_epochs=8, log_every=1), tmp_path,
          show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert max(lr) == 16  # 2 epochs of 8 steps, a quarter of the 64-step span: far from the floor
    assert lr[16] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 16 / 64)), rel=1e-6)


def test_validation_sees_the_training_step_and_every_sample(tmp_path):
    """An objective that changes with the training step validates at the step reached, knows it is
    validating, and averages over every val sample, the last partial batch included."""
    from accelerate import Accelerator

    from genflow.engine import Recipe, TrainConfig
    from genflow.engine.trainer import validation_loss

    seen = []

    class StepDependent(Recipe):
        name = "step-dependent"

        def compute_loss(self, model, batch, ctx):
            seen.append((ctx.step, ctx.epoch, ctx.validating, len(batch["x"])))
            weight = 0.0 if ctx.validating else ctx.step  # e.g. a warm-up that validation skips
            return batch["x"].mean() + weight, {}

    class Values(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"x": torch.tensor(float(i))}

    recipe = StepDependent.__new__(StepDependent)
    loss = validation_loss(recipe, torch.nn.Linear(1, 1), Values(), TrainConfig(batch_size=4), torch.device("cpu"),
                           Accelerator(cpu=True), step=120, epoch=3)
    assert loss == pytest.approx(4.5)  # the mean of 0..9: batches of 4, 4 and the last 2 all count
    assert seen == [(120, 3, True, 4), (120, 3, True, 4), (120, 3, True, 2)]


def test_hand_vae_validates_the_elbo_at_the_full_kl_weight():
    from genflow.engine import StepContext
    from genflow_recipes.hand_vae.recipe import HandVaeConfig, HandVaeRecipe

    config = HandVaeConfig()
    recipe = HandVaeRecipe(config)
    recipe._steps_per_epoch = 100
    training = StepContext(step=0, micro_step=0, epoch=0, device=torch.device("cpu"))
    validating = StepContext(step=0, micro_step=0, epoch=0, device=torch.device("cpu"), validating=True)
    assert recipe.beta(training) == 0.0 < config.loss.beta_max == recipe.beta(validating)


def test_early_stopping_stops_a_plateaued_run_and_resumes_exactly(toy_recipe, tmp_path):
    # a min_delta no change can beat: the first validation sets the reference, the next two do not improve on it
    options = {"epochs": 10, "eval_every": 1, "early_stop_patience": 2, "early_stop_min_delta": 1e9}
    straight = tmp_path / "straight"
    result = train(toy_recipe(**options), straight, show_progress=False)
    assert result.epochs_done == 3 and result.steps == 3 * 8 and result.best["stopped_early"] == 3
    split = tmp_path / "split"
    train(toy_recipe(max_steps=12, **options), split, show_progress=False)  # killed inside epoch 2
    train(toy_recipe(**options), split, resume_from=split / "checkpoints" / "last.pt", show_progress=False)
    assert_same_state(weights(straight), weights(split))
    again = train(toy_recipe(**options), split, resume_from=split / "checkpoints" / "last.pt", show_progress=False)
    assert again.steps == 24 and weights(split)["progress"]["step"] == 24  # a stopped run stays stopped
    never = train(toy_recipe(epochs=4, eval_every=1, early_stop_patience=2), tmp_path / "never", show_progress=False)
    assert never.epochs_done == 4 and "stopped_early" not in never.best  # a decreasing val loss never stops


TOP_K_RUN = {"epochs": 5, "keep_top_k": 2, "lr": 3e-2, "samples": 32, "log_every": 4, "log_with": None}  # 4 steps an epoch


def top_files(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("top_epoch_*.pt"))


@pytest.fixture
def no_loss_plot(monkeypatch):
    """Skip the loss picture drawn at each validation (most of a toy run's time)."""
    monkeypatch.setattr("genflow.engine.trainer.plot_loss_trajectory", lambda run_dir: None)


def test_keep_top_k_keeps_the_k_best_validations(toy_recipe, tmp_path, no_loss_plot):
    train(toy_recipe(**TOP_K_RUN), tmp_path, show_progress=False)
    val = {r["epoch"]: r["val_loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "val"}
    best_two = sorted(val, key=val.get)[:2]
    assert len(val) == 5 and top_files(tmp_path) == sorted(f"top_epoch_{epoch:04d}.pt" for epoch in best_two)
    assert [(e["epoch"], e["value"]) for e in weights(tmp_path)["best"]["top"]] == [(epoch, val[epoch]) for epoch in best_two]
    for epoch in best_two:  # each holds the weights of its epoch
        kept, periodic = weights(tmp_path, f"top_epoch_{epoch:04d}"), weights(tmp_path, f"epoch_{epoch:04d}")
        assert all(torch.equal(kept["model"][k], periodic["model"][k]) for k in periodic["model"])


def test_keep_top_k_files_are_the_same_after_a_kill_and_resume(toy_recipe, tmp_path, monkeypatch, capsys, no_loss_plot):
    from genflow.engine.trainer import Trainer

    straight = tmp_path / "straight"
    train(toy_recipe(**TOP_K_RUN), straight, show_progress=False)

    class Killed(BaseException):
        pass

    save = Trainer.save_checkpoint

    def killed_before_last_of_epoch_3(self, name):  # epoch 3's top file is written, its last.pt never is
        if name == "last" and self.state.step == 12:
            raise Killed
        return save(self, name)

    split = tmp_path / "split"
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_before_last_of_epoch_3)
    with pytest.raises(Killed):
        train(toy_recipe(**TOP_K_RUN), split, show_progress=False)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    assert weights(split)["progress"]["step"] == 8 and "top_epoch_0003.pt" in top_files(split)
    validating_less = tmp_path / "validating-less"
    shutil.copytree(split, validating_less)
    train(toy_recipe(**TOP_K_RUN), split, resume_from=split / "checkpoints" / "last.pt", show_progress=False)
    assert top_files(split) == top_files(straight) and len(top_files(straight)) == 2
    assert weights(split)["best"]["top"] == weights(straight)["best"]["top"]
    for name in top_files(straight):
        assert_same_state(weights(straight, name[:-3]), weights(split, name[:-3]))

    # resumed with validations every 2 epochs, epoch 3's top file is not written again: removed, and said
    capsys.readouterr()
    train(toy_recipe(**{**TOP_K_RUN, "eval_every": 2}), validating_less, resume_from=validating_less / "checkpoints" / "last.pt",
          show_progress=False)
    assert "top_epoch_0003.pt" not in top_files(validating_less) and "top_epoch_0003.pt: left by a run stopped" in capsys.readouterr().out
    assert top_files(validating_less) == sorted(e["file"] for e in weights(validating_less)["best"]["top"])


def test_training_gives_up_a_thread_to_a_busy_neighbour_and_a_fixed_count_stays(toy_recipe, tmp_path, monkeypatch, capsys):
    import genflow.engine.trainer as trainer_module
    from genflow.threads import CpuReading, ThreadBudget

    before = torch.get_num_threads()
    clock = iter(range(1000))  # each reading: one more second in which another process kept one of two cores busy

    def busy_neighbour():
        t = next(clock)
        return CpuReading(t, 1.0 * t, 0.0)

    def budget(threads, **kwargs):
        made = ThreadBudget(threads, **{**kwargs, "max_threads": 2, "reader": busy_neighbour, "first_after": 0.0})
        made.cpus = {0, 1}
        return made

    monkeypatch.setattr(trainer_module, "ThreadBudget", budget)
    try:
        train(toy_recipe(max_steps=4), tmp_path / "auto", show_progress=False)
        assert "threads: 1 (other processes keep 1.0 of 2 cores busy" in capsys.readouterr().out
        assert torch.get_num_threads() == 1
        train(toy_recipe(max_steps=4, threads=2), tmp_path / "fixed", show_progress=False)
        assert "threads:" not in capsys.readouterr().out and torch.get_num_threads() == 2
        runtime = yaml.safe_load((tmp_path / "fixed" / "config.yaml").read_text())["runtime"]["threads"]
        assert runtime == {"setting": 2, "at_start": 2}
    finally:
        torch.set_num_threads(before)
