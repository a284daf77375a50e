"""Experiment trackers (`train.log_with`) through Accelerate, and the loss kept on the device between log points."""

import importlib.util
import json
import os
from dataclasses import dataclass, field

import pytest
import torch

import genflow.engine.metrics_log as metrics_log
from genflow.config import load_config
from genflow.engine import TrainConfig
from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.metrics_log import TRACKER_PACKAGES, flatten_config, read_metrics
from genflow.engine.trainer import LogWindow, TrainingDiverged, train
from genflow.errors import ConfigError, GenflowError


@dataclass
class SectionConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


@pytest.mark.parametrize("override, trackers", [
    ([], ["tensorboard"]),
    (["train.log_with=mlflow"], ["mlflow"]),
    (["train.log_with=[tensorboard,mlflow]"], ["tensorboard", "mlflow"]),
    (["train.log_with=none"], []),
    (["train.log_with=null"], []),
])
def test_log_with_takes_a_name_a_list_or_none(override, trackers):
    assert load_config(SectionConfig, None, override).train.log_with == trackers


def test_an_unknown_tracker_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"'train.log_with': expected tensorboard \| wandb \| mlflow, a list of them or none, got 'mlfow'"):
        load_config(SectionConfig, None, ["train.log_with=mlfow"])


def test_every_tracker_name_has_a_package_to_install():
    assert set(TrainConfig.TRACKERS) == set(TRACKER_PACKAGES)


def test_config_flattens_to_scalars():
    flat = flatten_config({"train": {"lr": 1e-3, "betas": [0.9, 0.999], "max_steps": None, "ema": True}, "name": "x"})
    assert flat == {"train.lr": 1e-3, "train.betas": "[0.9, 0.999]", "train.max_steps": "null", "train.ema": True, "name": "x"}


def test_a_tracker_without_its_package_names_the_package(toy_recipe, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(metrics_log.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(GenflowError, match="train.log_with=wandb needs the wandb package: pip install wandb"):
        train(toy_recipe(log_with=["wandb"]), tmp_path, show_progress=False)


def test_log_with_none_writes_only_metrics_jsonl(toy_recipe, tmp_path):
    train(toy_recipe(epochs=1, log_with="none"), tmp_path, show_progress=False)
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0
    assert not (tmp_path / "tb").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "trackers.json").exists()


def test_tensorboard_gets_the_train_scalars_under_the_recipe_tags(toy_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = toy_recipe(epochs=1, log_every=2)
    recipe.tensorboard_tags = {"train/loss": "train_loss"}
    train(recipe, tmp_path, show_progress=False)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    jsonl = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [e.step for e in events.Scalars("train_loss")] == [r["step"] for r in jsonl] == [2, 4, 6, 8]
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx([r["loss"] for r in jsonl])
    assert "val/val_loss" in events.Tags()["scalars"]


@pytest.fixture
def mlflow_store(monkeypatch):
    """A reader of an MLflow file store: (client, its runs oldest first). The user's MLflow settings are
    cleared; the trainer allows the file store itself (MLflow 3 wants that explicitly), the reader after it."""
    mlflow = pytest.importorskip("mlflow")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(key, raising=False)

    def open_store(store):
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
        experiments = [e.experiment_id for e in client.search_experiments() if e.name != "Default"]
        return client, client.search_runs(experiments, order_by=["attributes.start_time ASC"])

    return open_store


def metric_steps(client, run, name="train/loss"):
    return [m.step for m in client.get_metric_history(run.info.run_id, name)]


def test_mlflow_file_store_in_the_run_dir_holds_the_train_loss_and_the_config(toy_recipe, tmp_path, mlflow_store):
    train(toy_recipe(epochs=2, log_every=4, log_with="mlflow"), tmp_path, show_progress=False)
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # restored
    client, (run,) = mlflow_store(tmp_path / "mlruns")
    assert run.info.run_name == tmp_path.name and run.info.status == "FINISHED"
    records = read_metrics(tmp_path)
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    jsonl = [r for r in records if r["kind"] == "train"]
    assert [m.step for m in loss] == [r["step"] for r in jsonl] == [4, 8, 12, 16]
    assert [m.value for m in loss] == pytest.approx([r["loss"] for r in jsonl])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/val_loss")] == pytest.approx(
        [r["val_loss"] for r in records if r["kind"] == "val"])
    params = run.data.params
    assert params["recipe"] == "toy" and float(params["train.lr"]) == 0.01 and params["train.log_every"] == "4"
    assert params["train.betas"] == "[0.9, 0.999]" and params["train.max_steps"] == "null"
    assert not (tmp_path / "tb").exists()
    recorded = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    assert recorded["run_id"] == run.info.run_id and recorded["store_in_run_dir"]


def test_runs_of_two_run_dirs_share_the_store_of_mlflow_tracking_uri(toy_recipe, tmp_path, mlflow_store, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(store))
    for name in ("first", "second"):
        train(toy_recipe(epochs=1, log_every=4, log_with="mlflow"), tmp_path / name, show_progress=False)
    client, runs = mlflow_store(store)
    assert [r.info.run_name for r in runs] == ["first", "second"]
    assert {client.get_experiment(r.info.experiment_id).name for r in runs} == {"toy"}
    assert [metric_steps(client, r) for r in runs] == [[4, 8], [4, 8]]
    assert not (tmp_path / "first" / "mlruns").exists()
    assert os.environ["MLFLOW_TRACKING_URI"] == str(store)  # the user's setting, as it was


def test_a_resumed_run_is_exact_and_continues_its_mlflow_run(toy_recipe, tmp_path, mlflow_store):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(toy_recipe(max_steps=10), straight, show_progress=False)
    train(toy_recipe(max_steps=5, log_with="mlflow"), split, show_progress=False)
    train(toy_recipe(max_steps=10, log_with="mlflow"), split, resume_from=split / "checkpoints" / "last.pt",
          show_progress=False)
    one, two = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(split / "checkpoints" / "last.pt")
    assert all(torch.equal(one["model"][k], two["model"][k]) for k in one["model"])
    client, (run,) = mlflow_store(split / "mlruns")
    assert metric_steps(client, run) == list(range(1, 11)) and run.info.status == "FINISHED"
    # MLflow parameters cannot change: the first value stays, the resume's is a tag
    assert run.data.params["train.max_steps"] == "5" and run.data.tags["genflow.resumed.train.max_steps"] == "10"


def test_a_resume_in_another_store_starts_a_new_run_there_and_says_so(toy_recipe, tmp_path, mlflow_store, monkeypatch,
                                                                       capsys):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    train(toy_recipe(max_steps=5, log_with="mlflow"), run_dir, show_progress=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "moved")
    train(toy_recipe(max_steps=10, log_with="mlflow"), run_dir, resume_from=run_dir / "checkpoints" / "last.pt",
          show_progress=False)
    assert f"the resume starts a new MLflow run at {store.as_uri()}" in capsys.readouterr().err
    client, (moved,) = mlflow_store(store)
    assert client.get_experiment(moved.info.experiment_id).name == "moved"
    assert metric_steps(client, moved) == [6, 7, 8, 9, 10]
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == moved.info.run_id


def test_a_store_mlflow_cannot_use_is_one_line_naming_the_variable(toy_recipe, tmp_path, mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuch://store")
    with pytest.raises(GenflowError, match="train.log_with=mlflow: MLflow cannot use MLFLOW_TRACKING_URI=nosuch://store: "):
        train(toy_recipe(log_with="mlflow"), tmp_path, show_progress=False)
    assert os.environ["MLFLOW_TRACKING_URI"] == "nosuch://store"


def test_a_diverged_run_ends_its_mlflow_run_failed_and_the_next_run_starts(toy_recipe, tmp_path, mlflow_store):
    with pytest.raises(TrainingDiverged):
        train(toy_recipe(fail_at_step=3, log_with="mlflow"), tmp_path / "bad", show_progress=False)
    assert mlflow_store(tmp_path / "bad" / "mlruns")[1][0].info.status == "FAILED"
    train(toy_recipe(epochs=1, log_with="mlflow"), tmp_path / "good", show_progress=False)
    assert mlflow_store(tmp_path / "good" / "mlruns")[1][0].info.status == "FINISHED"


@pytest.fixture
def wandb_offline(monkeypatch):
    """W&B offline (no account, no network), without the user's settings; its process state reset after."""
    wandb = pytest.importorskip("wandb")
    for key in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield wandb
    wandb.teardown()


def test_wandb_takes_the_users_settings_and_a_resume_continues_its_run(toy_recipe, tmp_path, monkeypatch, wandb_offline):
    calls, real_init = [], wandb_offline.init
    monkeypatch.setattr(wandb_offline, "init", lambda **kwargs: calls.append(kwargs) or real_init(**kwargs))
    run_dir, files = tmp_path / "run", tmp_path / "wandb_files"
    train(toy_recipe(max_steps=2, log_with="wandb"), run_dir, show_progress=False)
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    wandb_offline.teardown()  # W&B reads the environment once a process: the resume is a new `genflow train`
    files.mkdir()
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.setenv("WANDB_DIR", str(files))
    train(toy_recipe(max_steps=4, log_with="wandb"), run_dir, resume_from=run_dir / "checkpoints" / "last.pt",
          show_progress=False)
    assert calls == [{"project": "toy", "name": "run", "dir": str(run_dir)}, {"name": "run", "id": run_id, "resume": "allow"}]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}")) and list((files / "wandb").glob(f"offline-run-*-{run_id}"))
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"] == {"id": run_id, "project": "mine"}


# --- the loss stays on the device between log points ----------------------------------------------
def test_the_loss_reaches_the_host_only_at_log_points_and_before_checkpoints(toy_recipe, tmp_path, monkeypatch):
    reads = []
    real = LogWindow.host_losses
    monkeypatch.setattr(LogWindow, "host_losses", lambda self, acc: reads.append(len(self.losses)) or real(self, acc))
    train(toy_recipe(epochs=1, log_every=4), tmp_path, show_progress=False)  # 8 steps
    assert reads == [4, 4, 0]  # log lines at steps 4 and 8, then the (empty) check before the epoch's checkpoints


def test_a_nan_between_log_points_stops_before_the_next_checkpoint(toy_recipe, tmp_path):
    with pytest.raises(TrainingDiverged, match="loss became nan at step 11 "):
        train(toy_recipe(fail_at_step=11, log_every=5, checkpoint_every_steps=3), tmp_path, show_progress=False)
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept["progress"]["step"] == 9  # written at step 9; the check before step 12's checkpoint stopped the run
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    assert max(r["step"] for r in read_metrics(tmp_path)) == 10  # no line logged from the spoiled window


def test_a_recipe_error_on_weights_spoiled_by_an_unseen_nan_reports_the_nan(toy_recipe, tmp_path):
    recipe = toy_recipe(fail_at_step=3, log_every=100)
    compute_loss = recipe.compute_loss

    def strict_loss(model, batch, ctx):  # e.g. a distribution that validates its NaN parameters
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise ValueError("parameters are not finite")
        return compute_loss(model, batch, ctx)

    recipe.compute_loss = strict_loss
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3 "):
        train(recipe, tmp_path, show_progress=False)


def test_a_train_line_logs_the_mean_of_its_steps_losses(toy_recipe, tmp_path):
    train(toy_recipe(epochs=1, log_every=1), tmp_path / "each", show_progress=False)
    train(toy_recipe(epochs=1, log_every=4), tmp_path / "four", show_progress=False)
    each = [r["loss"] for r in read_metrics(tmp_path / "each") if r["kind"] == "train"]
    four = [r["loss"] for r in read_metrics(tmp_path / "four") if r["kind"] == "train"]
    assert four == pytest.approx([sum(each[:4]) / 4, sum(each[4:]) / 4], rel=1e-12)
