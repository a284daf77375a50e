"""genflow.engine.run_dir: run names, the self-describing config.yaml, finding the latest run, pinned data
paths and loading a run back. Fake run directories written by the tests; no training."""

import os
import re
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from genflow.engine import run_dir as run_dir_module
from genflow.engine.checkpoint import atomic_torch_save
from genflow.engine.run_dir import (CONFIG_FILE, check_run_name, default_run_name, find_latest_run, load_run, pin_data_path,
                                    read_run_config, record_runtime, run_dir_for, write_run_config)
from genflow.errors import CheckpointError, ConfigError
from support import ToyConfig, ToyRecipe


@dataclass
class DataSection:
    data_dir: str = "datasets/toy"


@dataclass
class ToyDataConfig(ToyConfig):
    data: DataSection = field(default_factory=DataSection)


class ToyDataRecipe(ToyRecipe):
    """The toy recipe with a dataset directory (`data.data_dir`) in its config."""

    name = "toy-data"
    config_class = ToyDataConfig


def fake_run(run_dir, recipe=ToyRecipe, config=None, checkpoints=("last",), ema=False):
    """A run directory as `genflow train` leaves it: config.yaml and checkpoints of distinct weights."""
    run_dir.mkdir(parents=True)
    write_run_config(run_dir, recipe.name, config if config is not None else recipe.config_class())
    for i, name in enumerate(checkpoints):
        with torch.random.fork_rng():
            torch.manual_seed(i)
            weights = recipe(recipe.config_class()).build_model().state_dict()
        average = {k: v + 100 for k, v in weights.items()} if ema else None
        atomic_torch_save({"model": weights, "ema": average, "progress": {"step": i}}, run_dir / "checkpoints" / f"{name}.pt")
    return run_dir


@pytest.fixture
def recipes(monkeypatch):
    """`load_run` finds the toy recipes by the names their config.yaml records."""
    known = {cls.name: cls for cls in (ToyRecipe, ToyDataRecipe)}
    monkeypatch.setattr(run_dir_module, "get_recipe", lambda name: known[name])


def test_a_default_run_name_is_the_start_time():
    assert re.fullmatch(r"\d{8}-\d{6}", default_run_name())


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "a\\b", " padded", "nul\0"])
def test_a_run_name_that_is_not_one_directory_name_is_one_clear_error(name):
    with pytest.raises(ConfigError, match="a run name is one directory name"):
        check_run_name(name)


def test_run_dir_for_names_the_place_without_creating_it_and_refuses_a_trained_run(tmp_path):
    assert run_dir_for(tmp_path, "toy", "r1") == tmp_path / "toy" / "r1" and not (tmp_path / "toy").exists()
    assert re.fullmatch(r"\d{8}-\d{6}", run_dir_for(tmp_path, "toy", None).name)
    fake_run(tmp_path / "toy" / "r1")
    with pytest.raises(CheckpointError, match="a run with this name exists; pass --resume"):
        run_dir_for(tmp_path, "toy", "r1")


def test_the_run_config_records_recipe_config_and_provenance_with_the_runtime_after_it(tmp_path):
    config = ToyConfig(samples=32)
    write_run_config(tmp_path, "toy", config, extra={"data_path": {"key": "data.data_dir"}})
    record_runtime(tmp_path, {"precision": "no", "world_size": 1})
    doc = read_run_config(tmp_path)
    assert doc["recipe"] == "toy" and doc["config"]["samples"] == 32 and doc["config"]["train"]["epochs"] == 3
    assert doc["data_path"] == {"key": "data.data_dir"} and doc["runtime"] == {"precision": "no", "world_size": 1}
    assert {"genflow", "torch", "python", "git_commit"} <= set(doc["environment"])
    assert list(doc)[-1] == "config"  # the config stays last, where a reader looks for it
    assert not [p for p in tmp_path.iterdir() if p.name != CONFIG_FILE]  # no temp file left behind


@pytest.mark.parametrize("content, message", [(None, "not a genflow run directory"), ("a: [", "not valid YAML"),
                                              ("recipe: toy\n", "missing 'recipe' or 'config'"), ("- 1\n", "missing")])
def test_a_directory_that_is_no_run_is_one_clear_error(tmp_path, content, message):
    if content is not None:
        (tmp_path / CONFIG_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        read_run_config(tmp_path)


def test_the_latest_run_is_the_one_whose_last_checkpoint_changed_last(tmp_path):
    assert find_latest_run(tmp_path, "toy") is None
    old, new = fake_run(tmp_path / "toy" / "b-old"), fake_run(tmp_path / "toy" / "a-new")
    fake_run(tmp_path / "toy" / "z-untrained", checkpoints=())
    os.utime(old / "checkpoints" / "last.pt", (1_000_000, 1_000_000))
    os.utime(new / "checkpoints" / "last.pt", (2_000_000, 2_000_000))
    assert find_latest_run(tmp_path, "toy") == new
    assert find_latest_run(tmp_path, "other") is None


def test_a_relative_data_path_is_pinned_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ToyDataConfig(data=DataSection(data_dir="sets/toy"))
    absolute = str(tmp_path.resolve() / "sets" / "toy")
    assert pin_data_path(ToyDataRecipe, config) == {"key": "data.data_dir", "given": "sets/toy", "absolute": absolute,
                                                    "manifest_sha256": None}  # no dataset there yet
    assert config.data.data_dir == absolute
    assert pin_data_path(ToyRecipe, ToyConfig()) is None  # no data section: nothing to pin


def test_load_run_takes_best_else_last_and_the_ema_weights_when_kept(tmp_path, recipes):
    run = load_run(fake_run(tmp_path / "r", checkpoints=("last",)))
    assert run.checkpoint.name == "last.pt" and isinstance(run.recipe, ToyRecipe) and not run.model.training
    run_dir = fake_run(tmp_path / "ema", checkpoints=("best", "last"), ema=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert torch.equal(load_run(run_dir).model[0].weight, best["ema"]["0.weight"])
    assert torch.equal(load_run(run_dir, use_ema=False).model[0].weight, best["model"]["0.weight"])
    assert load_run(run_dir, "last").state["progress"]["step"] == 1


def test_load_run_names_the_checkpoints_a_run_has_when_asked_for_another(tmp_path, recipes):
    run_dir = fake_run(tmp_path / "r", checkpoints=("last", "epoch_0002"))
    with pytest.raises(CheckpointError, match=r"epoch_0009.pt: checkpoint not found \(this run has: epoch_0002, last\)"):
        load_run(run_dir, "epoch_0009")


def test_a_trained_run_s_data_may_move_but_its_model_is_fixed(tmp_path, recipes):
    data, moved = tmp_path.resolve() / "data", tmp_path.resolve() / "moved"
    data.mkdir()
    run_dir = fake_run(tmp_path / "r", ToyDataRecipe, ToyDataConfig(data=DataSection(data_dir=str(data))))
    assert load_run(run_dir).config.data.data_dir == str(data)
    data.rename(moved)
    with pytest.raises(CheckpointError, match="is not there .* point the run at it with data.data_dir=DIR"):
        load_run(run_dir)
    assert load_run(run_dir, need_data=False).config.data.data_dir == str(data)  # export needs only the weights
    assert load_run(run_dir, overrides=[f"data.data_dir={moved}"]).config.data.data_dir == str(moved)
    with pytest.raises(ConfigError, match="model and training config are fixed"):
        load_run(run_dir, overrides=["train.lr=0.5"], need_data=False)
