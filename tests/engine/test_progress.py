"""A run without a terminal (SLURM, nohup, `> log`) still reports progress as plain lines."""

import re

import genflow.engine.progress as progress
from genflow.engine.trainer import train

LINE = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)/(\d+)  loss \S+ .*samples/s  elapsed \S+  eta \S+$")


def test_plain_lines_every_log_interval_with_throughput_and_eta(toy_recipe, tmp_path, capsys):
    train(toy_recipe(epochs=2, log_every=2), tmp_path, show_progress=True)  # pytest's stdout is not a TTY
    lines = [m for m in map(LINE.match, capsys.readouterr().out.splitlines()) if m]
    steps = [int(m.group(3)) for m in lines]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16]  # 8 steps per epoch, a line every 2
    assert {m.group(1) for m in lines} == {"1", "2"} and all(m.group(2) == "2" and m.group(4) == "16" for m in lines)


def test_slow_steps_still_print_a_line_every_interval(toy_recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_LINE_EVERY_S", 0.0)  # every step is "30 s later"
    train(toy_recipe(epochs=1, log_every=100), tmp_path, show_progress=False)  # --no-progress keeps the lines
    steps = [int(m.group(3)) for m in map(LINE.match, capsys.readouterr().out.splitlines()) if m]
    assert steps == list(range(1, 9))


def test_train_and_val_records_number_epochs_alike(toy_recipe, tmp_path):
    from genflow.engine.metrics_log import read_metrics

    train(toy_recipe(epochs=2, log_every=8), tmp_path, show_progress=False)
    records = read_metrics(tmp_path)
    train_epochs = [r["epoch"] for r in records if r["kind"] == "train"]
    val_epochs = [r["epoch"] for r in records if r["kind"] == "val"]
    assert train_epochs == val_epochs == [1, 2]  # the last step of epoch k and the evaluation after it


def test_duration_format():
    assert progress.format_duration(3725.9) == "1:02:05"
