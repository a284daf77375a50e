from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from genflow.config import config_to_dict, load_config
from genflow.engine import TrainConfig
from genflow.errors import ConfigError


@dataclass
class Model:
    width: int = 8
    kind: Literal["a", "b"] = "a"
    hidden: tuple[int, ...] = (4, 4)


@dataclass
class Cfg:
    aliases: ClassVar[dict[str, str]] = {"base_lr": "train.lr"}
    model: Model = field(default_factory=Model)
    train: TrainConfig = field(default_factory=TrainConfig)
    note: str | None = None


def test_yaml_then_overrides_resolve_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 16\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(Cfg, path, ["model.kind=b", "train.epochs=3", "model.hidden=[1,2,3]", "base_lr=5e-5", "note=null"])
    assert cfg.model.width == 16 and cfg.model.kind == "b" and cfg.model.hidden == (1, 2, 3)
    assert cfg.train.epochs == 3 and cfg.train.lr == pytest.approx(5e-5) and cfg.note is None
    assert config_to_dict(cfg)["model"]["hidden"] == [1, 2, 3]


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*train\.epochs"):
        load_config(Cfg, None, ["train.epoch=3"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*model\.widht.*model\.width"):
        load_config(Cfg, path)


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=ten", "train.epochs': expected int"),
    ("model.kind=c", "model.kind': expected 'a' | 'b'"),
    ("train.lr=fast", "train.lr': expected float"),
    ("model=3", "model': expected Model"),
    ("train.epochs.x=1", "train.epochs' is a int, not a section"),
    ("nothing", "expected key.sub=value"),
])
def test_wrong_values_are_clear_errors(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("|", r"\|")):
        load_config(Cfg, None, [override])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.eval_every=0", "train.epochs=-1", "train.lr=-1",
                                      "train.ema_decay=1.5", "train.grad_clip=0", "train.max_steps=0"])
def test_out_of_range_training_values_are_config_errors(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(Cfg, None, [override])


