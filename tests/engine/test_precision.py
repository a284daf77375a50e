"""Precision `auto` fits the hardware; every documented spelling works from the CLI and from YAML."""

import pytest
import torch
import yaml

import genflow.engine.precision as precision
from genflow.config import load_config
from genflow.engine import TrainConfig
from genflow.engine.trainer import train
from genflow.errors import ConfigError


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Fake the CPU's bf16 capability: `cpu_bf16(True | False)`."""
    def fake(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    return fake


@pytest.mark.parametrize("value, request_name", [
    (False, "no"), ("no", "no"), (32, "no"), ("32", "no"), ("fp32", "no"), ("32-true", "no"),
    ("bf16", "bf16"), ("bf16-mixed", "bf16"), ("fp16", "fp16"), ("16-mixed", "16-mixed"), (16, "16-mixed"),
    ("auto", "auto"), ("AUTO", "auto")])
def test_every_spelling_is_a_precision_request(value, request_name):
    assert TrainConfig(precision=value).precision == request_name


@pytest.mark.parametrize("text", ["no", "32", "fp32", "bf16", "16-mixed", "auto"])
def test_yaml_and_overrides_need_no_quotes(tmp_path, text):
    """YAML reads `no` as false and `32` as an integer; both still mean fp32."""
    path = tmp_path / "c.yaml"
    path.write_text(f"precision: {text}\n")
    from_file = load_config(TrainConfig, path)
    from_override = load_config(TrainConfig, None, [f"precision={text}"])
    assert from_file.precision == from_override.precision == TrainConfig(precision=text).precision


def test_an_unknown_precision_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="train.precision.*auto.*got 'fp8'"):
        TrainConfig(precision="fp8")


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_bf16_with_it(cpu_bf16):
    cpu_bf16(False)
    assert precision.resolve_precision("auto", "cpu")[0] == "no"
    cpu_bf16(True)
    assert precision.resolve_precision("auto", "cpu")[0] == "bf16"


def test_explicit_requests_are_kept_on_cpu(cpu_bf16):
    cpu_bf16(False)
    assert precision.resolve_precision("no", "cpu")[0] == "no"
    assert precision.resolve_precision("bf16", "cpu")[0] == "bf16"  # asked for: honoured, with a warning in the reason
    assert "slower" in precision.resolve_precision("bf16", "cpu")[1]
    assert precision.resolve_precision("16-mixed", "cpu")[0] == "bf16"  # Lightning's meaning on a CPU
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision.resolve_precision("fp16", "cpu")


def test_recipe_autocast_follows_the_resolution(cpu_bf16):
    cpu = torch.device("cpu")
    cpu_bf16(False)
    assert precision.autocast_dtype("auto", cpu) is None
    assert precision.autocast_dtype("fp16", cpu) is None  # a GPU run's fp16, evaluated on a CPU
    cpu_bf16(True)
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16


def test_a_run_records_the_request_and_what_it_resolved_to(toy_recipe, tmp_path, cpu_bf16):
    cpu_bf16(False)
    train(toy_recipe(max_steps=2, precision="auto"), tmp_path / "a", show_progress=False)
    doc = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert doc["config"]["train"]["precision"] == "auto"  # the request: a resume elsewhere resolves again
    runtime = doc["runtime"]
    assert runtime["precision"] == "no" and runtime["device"] == "cpu" and runtime["world_size"] == 1
    assert "bf16 native: " in runtime["cpu"]
    env = doc["environment"]
    assert env["torch"] == str(torch.__version__) and env["python"] and env["accelerate"] and env["host"]
    assert "git_dirty" in env


def test_cpu_description_names_the_model_and_bf16():
    text = precision.cpu_description()
    assert "bf16 native:" in text and "threads" in text and "flags:" in text
