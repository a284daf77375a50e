"""`train.profile START:END` / `genflow train --profile`: torch.profiler over those optimiser steps into RUN/profile/."""

from __future__ import annotations

import json

import pytest

from genflow.engine import TrainConfig
from genflow.engine.trainer import train
from genflow.errors import ConfigError


def test_a_profiled_span_writes_a_chrome_trace_and_a_per_op_table(toy_recipe, tmp_path, capsys):
    train(toy_recipe(epochs=1, profile="1:3", log_with="none"), tmp_path, show_progress=False)  # 8 steps
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"optimiser step 2", "optimiser step 3"} <= names and "optimiser step 4" not in names  # 0-based 1:3
    table = (tmp_path / "profile" / "ops.txt").read_text()
    assert "self CPU time, optimiser steps 2..3" in table and "aten::addmm" in table  # the MLP's Linear layers
    assert f"{tmp_path / 'profile' / 'trace.json'}" in capsys.readouterr().out


def test_steps_past_the_run_s_end_are_said_not_a_crash(toy_recipe, tmp_path, capsys):
    train(toy_recipe(epochs=1, profile="20:30", log_with="none"), tmp_path / "none", show_progress=False)
    assert "the run has 8 optimiser steps, so none of steps 21..30 is left to profile" in capsys.readouterr().out
    assert not (tmp_path / "none" / "profile").exists()
    train(toy_recipe(epochs=1, profile="6:30", log_with="none"), tmp_path / "cut", show_progress=False)
    assert "the run ends at step 8; profiling steps 7..8" in capsys.readouterr().out
    assert "self CPU time, optimiser steps 7..8" in (tmp_path / "cut" / "profile" / "ops.txt").read_text()


@pytest.mark.parametrize("value", ["5:3", "3", "a:b", "5:", 7])
def test_a_span_that_is_not_start_colon_end_is_a_config_error(value):
    with pytest.raises(ConfigError, match="'train.profile': expected START:END"):
        TrainConfig(profile=value)


def test_the_cli_option_and_an_unquoted_yaml_span_both_set_it(cli, tmp_path):
    from genflow.config import load_config

    assert load_config(TrainConfig, None, ["profile=10:15"]).profile_steps() == (10, 15)  # YAML 1.1 reads 615
    code, out, _ = cli("train", "digit4", "--profile", "2:4", "--print-config", "--runs-dir", tmp_path)
    assert code == 0 and "profile: '2:4'" in out
