"""`genflow sweep`: the grid grammar, the trial plan, the core split, and real sweeps of `genflow train`
processes that survive a kill of the sweep and continue (those start processes: marked slow)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from genflow.engine.sweep import Axis, core_slots, parse_sweep_words, plan_trials
from genflow.errors import ConfigError
from support import TINY_MODEL


def test_choice_and_range_make_axes_and_other_words_stay_fixed():
    axes, fixed = parse_sweep_words(["train.lr=choice(1e-3, 3e-3)", "model.encoder_hidden=choice([16,32],[32,64])",
                                     "train.epochs=range(1,6,2)", "eval.steps=4", "model.encoder_hidden_list=[1,2]"])
    assert axes == [Axis("train.lr", ("1e-3", "3e-3")), Axis("model.encoder_hidden", ("[16,32]", "[32,64]")),
                    Axis("train.epochs", ("1", "3", "5"))]
    assert fixed == ["eval.steps=4", "model.encoder_hidden_list=[1,2]"]
    assert parse_sweep_words(["train.lr=range(0.1,0.35,0.1)"])[0][0].values == ("0.1", "0.2", "0.3")


@pytest.mark.parametrize("words, message", [
    (["train.lr=1e-3,3e-3"], "train.lr=choice(1e-3,3e-3)"),  # Hydra's bare list: refused, not read as the string
    (["train.lr=choice(1e-3)", "train.lr=choice(2e-3)"], "swept twice"),
    (["train.lr=choice(1e-3)", "train.lr=1e-2"], "also swept"),
    (["train.lr=choice(1e-3,1e-3)"], "repeated"),
    (["train.lr=choice()"], "no empty value"),
    (["train.epochs=range(5,1)"], "empty"),
    (["train.epochs=range(a,b)"], "expected range(start, stop)"),
])
def test_ambiguous_or_broken_sweep_words_are_one_clear_error(words, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sweep_words(words)


def test_a_grid_times_seeds_names_every_trial_and_samples_draw_without_repeats():
    axes, fixed = parse_sweep_words(["train.lr=choice(1e-3,3e-3)", "model.field_hidden=choice(32,64)", "eval.steps=4"])
    trials = plan_trials(axes, fixed, seeds=2, first_seed=7)
    assert len(trials) == 8 and len({t.name for t in trials}) == 8
    assert trials[0].name == "000-lr1e-3-field_hidden32-s7"
    assert trials[1].overrides == ["eval.steps=4", "train.lr=1e-3", "model.field_hidden=32", "train.seed=8"]
    drawn = plan_trials(axes, fixed, samples=3, sample_seed=1)
    assert len(drawn) == 3 and len({json.dumps(t.point) for t in drawn}) == 3
    assert [t.point for t in drawn] == [t.point for t in plan_trials(axes, fixed, samples=3, sample_seed=1)]
    with pytest.raises(ConfigError, match="--seeds"):
        plan_trials(*parse_sweep_words(["train.seed=choice(1,2)"]), seeds=2)


def test_parallel_trials_split_the_cores_and_share_them_round_robin_when_too_few():
    assert core_slots(2, cores=[0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert core_slots(1, cores=[0, 1]) == [[0, 1]]
    assert core_slots(3, cores=[0, 1]) == [[0], [1], [0]]


def _sweep_command(tmp_path, digit4_dir, *words):
    return [sys.executable, "-m", "genflow.cli", "sweep", "digit4", *words, "--name", "s", "--runs-dir", str(tmp_path),
            f"data.path={digit4_dir}", "train.precision=no", *TINY_MODEL]


@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped(tmp_path, digit4_dir):
    """SIGKILL of the sweep while its second trial trains: that trial is stopped too (no orphan trains on,
    unseen) with last.pt written; the same command resumes it there and does not train the finished one again."""
    command = _sweep_command(tmp_path, digit4_dir, "train.epochs=choice(1,12)")
    sweep_dir = tmp_path / "sweeps" / "s"
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = sweep_dir / "digit4" / "001-epochs12" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file() and time.monotonic() < deadline:  # kill after the long trial's first epoch
        time.sleep(0.1)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["done", "running"]
    log = sweep_dir / "logs" / "001-epochs12.log"
    deadline = time.monotonic() + 60
    while "SIGTERM received" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "SIGTERM received" in log.read_text(), log.read_text()[-2000:]  # the orphan got SIGTERM and saved last.pt
    first_trial_log = (sweep_dir / "digit4" / "000-epochs1" / "metrics.jsonl").read_text()

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "continuing sweep" in done.stdout and "1 of 2 trials done" in done.stdout
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(t["status"], t["starts"]) for t in state["trials"]] == [("done", 1), ("done", 2)]
    second_start = (sweep_dir / "logs" / "001-epochs12.log").read_text().split("$ ")[-1]
    assert "step 2/60 " not in second_start and "step 60/60 " in second_start  # continued from last.pt, not from step 0
    assert (sweep_dir / "digit4" / "000-epochs1" / "metrics.jsonl").read_text() == first_trial_log
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [(row["trial"], row["status"]) for row in summary["trials"]] == [("000-epochs1", "done"), ("001-epochs12", "done")]
    assert all(isinstance(row["best"], float) for row in summary["trials"])


@pytest.mark.slow
def test_a_trial_of_two_cpu_processes(tmp_path, digit4_dir):
    """--gpus 2 without CUDA: each trial is `genflow train --gpus 2`, two gloo processes."""
    done = subprocess.run(_sweep_command(tmp_path, digit4_dir, "train.lr=choice(1e-3)", "train.max_steps=2", "--gpus", "2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    import yaml

    config = yaml.safe_load((tmp_path / "sweeps" / "s" / "digit4" / "000-lr1e-3" / "config.yaml").read_text())
    assert config["runtime"]["world_size"] == 2
