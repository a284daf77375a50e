"""`genflow runs ls | compare`: summaries of hand-written run dirs (no training), the table's formats and
sorting, runs that cannot be read, and the `config_file` a run's config.yaml records."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from genflow.config import config_to_dict, load_config
from genflow.engine.recipe import get_recipe
from genflow.engine.run_setup import prepare_training
from genflow.engine.run_table import find_runs, run_summary, runs_table
from genflow.errors import CheckpointError, ConfigError, GenflowError

HOUR_AGO = time.time() - 3600


def digit4_config(yaml_file: Path | None = None, **train: object) -> dict:
    """digit4's config resolved from `yaml_file` (default: the recipe's), with `train` keys changed."""
    cls = get_recipe("digit4")
    config = config_to_dict(load_config(cls.config_class, yaml_file or cls.default_config, []))
    config["train"].update(train)
    return config


def write_run(run_dir: Path, *, records: list[dict] = (), config: dict | None = None, recipe: str = "digit4",
              age_s: float | None = 3600, **extra: object) -> Path:
    """config.yaml (started an hour ago unless `age_s` is None) and metrics.jsonl, as the engine writes them."""
    run_dir.mkdir(parents=True)
    start = int(time.time() - (age_s or 0))
    doc = {"recipe": recipe, "written": dt.datetime.fromtimestamp(start).isoformat(), **extra,
           "config": config or digit4_config(epochs=2)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    if records:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if age_s is not None:  # the runtime added a second after the start; the last record ten minutes after it
        os.utime(run_dir / "config.yaml", (start + 1,) * 2)
        if records:
            os.utime(run_dir / "metrics.jsonl", (start + 600,) * 2)
    return run_dir


def two_epochs(values: tuple[float, float] = (0.5, 0.3)) -> list[dict]:
    """metrics.jsonl of two digit4 epochs of 10 steps, validated after each."""
    return [{"kind": "train", "step": 5, "epoch": 1, "loss": 1.0},
            {"kind": "val", "step": 10, "epoch": 1, "chamfer_l2": values[0]},
            {"kind": "train", "step": 15, "epoch": 2, "loss": 0.8},
            {"kind": "val", "step": 20, "epoch": 2, "chamfer_l2": values[1]}]


def test_a_finished_run_is_summarised_from_its_files(tmp_path):
    config = digit4_config(epochs=2, lr=0.01)
    config["data"]["path"] = "/somewhere/datasets/digit4"  # pinned absolute; the user gave the default's path
    config["train"]["dropped_since"] = 1  # a key genflow no longer has: not a change the user made
    run = write_run(tmp_path / "a", records=two_epochs(), config=config,
                    data_path={"key": "data.path", "given": "datasets/digit4"},
                    runtime={"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "world_size": 2})
    (run / "eval").mkdir()
    result = {"checkpoint": "best.pt", "split": "test", "chamfer_l2": 0.25, "solver": "euler", "clouds": 64}  # as `eval` saves it
    (run / "eval" / "chamfer-test-best.json").write_text(json.dumps(result))
    (run / "eval" / "chamfer-val.json").write_text(json.dumps({"split": "val", "chamfer_l2": 0.2}))
    summary = run_summary(run)
    assert summary["status"] == "finished" and summary["steps"] == 20 and summary["epochs"] == 2
    assert summary["changed"] == {"train.epochs": 2, "train.lr": 0.01}
    assert summary["best"] == {"metric": "chamfer_l2", "mode": "min", "value": 0.3, "epoch": 2}
    assert summary["test"] == {"best": {"chamfer_l2": 0.25, "clouds": 64}}  # test split only, numbers only
    assert summary["wall_s"] == 600
    assert (summary["device"], summary["world_size"], summary["warnings"]) == ("NVIDIA H100 80GB HBM3", 2, [])
    line = runs_table([summary], metrics=["chamfer_l2"]).splitlines()[1].split()
    assert line == ["digit4", "a", "finished", "train.epochs=2", "train.lr=0.01", "2/2", "20", "chamfer_l2=0.3", "@2",
                    "chamfer_l2=0.25", "10m00s", "2x", "NVIDIA", "H100", "80GB", "HBM3"]


def test_the_status_says_how_a_run_ended(tmp_path):
    unfinished = two_epochs()[:2]
    interrupted = write_run(tmp_path / "interrupted", records=unfinished)
    running = write_run(tmp_path / "running", records=unfinished, age_s=None)
    failed = write_run(tmp_path / "failed")
    imported = write_run(tmp_path / "imported", imported_from={"codebase": "elsewhere"})
    stopped = write_run(tmp_path / "stopped", records=unfinished, config=digit4_config(epochs=5, early_stop_patience=1))
    (stopped / "checkpoints").mkdir()
    torch.save({"progress": {"step": 10, "epoch": 1}, "best": {"metric": "chamfer_l2", "stopped_early": 1}},
               stopped / "checkpoints" / "last.pt")
    os.utime(stopped / "checkpoints" / "last.pt", (HOUR_AGO,) * 2)
    capped = write_run(tmp_path / "capped", records=unfinished, config=digit4_config(epochs=5, max_steps=10))
    status = {run.name: run_summary(run)["status"] for run in (interrupted, running, failed, imported, stopped, capped)}
    assert status == {"interrupted": "interrupted", "running": "running", "failed": "failed", "imported": "imported",
                      "stopped": "stopped early", "capped": "finished"}
    assert run_summary(stopped)["stopped_early"] == 1


def test_changed_keys_count_from_the_recorded_config_file_and_are_unknown_without_the_recipe(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  lr: 0.02\n  epochs: 2\n")
    run = write_run(tmp_path / "mine", records=two_epochs(), config=digit4_config(mine, seed=7), config_file=str(mine))
    summary = run_summary(run)
    assert summary["changed"] == {"train.seed": 7} and summary["config_is_default"] is False
    assert "config=mine.yaml train.seed=7" in runs_table([summary])
    gone = write_run(tmp_path / "gone", records=two_epochs(), recipe="no-such-recipe")
    summary = run_summary(gone)
    assert summary["changed"] is None and summary["best"]["value"] == 0.3  # the rest is still read
    assert "changed keys unknown: unknown recipe 'no-such-recipe'" in summary["warnings"][0]
    assert runs_table([summary]).splitlines()[1].split()[3] == "?"


def test_wall_time_is_left_blank_when_the_file_times_cannot_be_trusted(tmp_path):
    copied = write_run(tmp_path / "copied", records=two_epochs())
    os.utime(copied / "config.yaml")  # a plain copy: the files' times are the copy's
    resumed = write_run(tmp_path / "resumed", records=two_epochs(), resumed_from="RUN/checkpoints/last.pt")
    assert run_summary(copied)["wall_s"] is None and run_summary(resumed)["wall_s"] is None
    assert runs_table([run_summary(copied)]).splitlines()[1].split()[-2] == "-"


def test_unreadable_metric_lines_and_result_files_are_reported_not_fatal(tmp_path):
    run = write_run(tmp_path / "r", records=two_epochs())
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 25, "epo\n')  # a line cut by a kill
    (run / "eval").mkdir()
    (run / "eval" / "broken.json").write_text("{")
    summary = run_summary(run)
    assert summary["steps"] == 20
    assert summary["warnings"][0] == "metrics.jsonl: 1 line(s) not a metrics record, left out"
    assert summary["warnings"][1].startswith("eval/broken.json: not readable as JSON")


def test_find_runs_walks_into_sweeps_and_names_the_runs_it_cannot_read(tmp_path):
    a = write_run(tmp_path / "runs" / "digit4" / "a")
    trial = write_run(tmp_path / "runs" / "sweeps" / "s1" / "digit4" / "000-lr1e-3")
    (tmp_path / "runs" / "other").mkdir()
    (tmp_path / "runs" / "other" / "config.yaml").write_text("lr: 1\n")  # not a run: its subfolders are still searched
    nested = write_run(tmp_path / "runs" / "other" / "digit4" / "b")
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.yaml").write_text("recipe: [digit4\n")
    skipped: list[str] = []
    assert find_runs(tmp_path / "runs", skipped=skipped) == sorted([a, trial, nested])
    assert len(skipped) == 1 and skipped[0].startswith(f"{tmp_path / 'runs' / 'broken' / 'config.yaml'}: not valid YAML")
    with pytest.warns(UserWarning, match="1 run dir"):
        find_runs(tmp_path / "runs")
    assert find_runs(a) == [a]
    with pytest.raises(GenflowError, match="no such directory"):
        find_runs(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a genflow run directory"):
        run_summary(tmp_path / "runs" / "other")


def row(name: str, **values: object) -> dict:
    return {"recipe": "digit4", "name": name, "status": "finished", "changed": {}, "test": {}, **values}


def test_sorting_is_numeric_where_numeric_and_puts_missing_values_last():
    rows = [row("a", steps=100, best={"metric": "m", "value": 0.2, "epoch": 1}), row("b", steps=20),
            row("c", steps=None, best={"metric": "m", "value": 0.1, "epoch": 1}), row("d", steps=3)]
    names = lambda table: [line.split()[1] for line in table.splitlines()[1:]]  # noqa: E731
    assert names(runs_table(rows, sort="steps")) == ["d", "b", "a", "c"]
    assert names(runs_table(rows, sort="steps", descending=True)) == ["a", "b", "d", "c"]
    assert names(runs_table(rows, sort="best")) == ["c", "a", "b", "d"]
    assert names(runs_table(rows, sort="name", descending=True)) == ["d", "c", "b", "a"]
    assert names(runs_table(rows)) == ["a", "b", "c", "d"]
    tested = [row("x", test={"e-test": {"fd": 3.0}}), row("y"), row("z", test={"e-test": {"fd": 1.0}})]
    assert names(runs_table(tested, sort="test.fd")) == ["z", "x", "y"]
    with pytest.raises(ConfigError, match="--sort 'bset'"):
        runs_table(rows, sort="bset")


def test_test_results_of_best_pt_lead_and_each_other_checkpoint_gets_its_own_cell_part():
    evaluated = row("a", test={"average_best_3": {"fd": 1.0}, "best": {"fd": 2.0}})
    cell = runs_table([evaluated], metrics=("fd",)).splitlines()[1]
    assert "best: fd=2; average_best_3: fd=1" in cell
    assert runs_table([evaluated, row("b", test={"best": {"fd": 1.5}})], sort="test.fd").splitlines()[1].split()[1] == "b"


def test_markdown_and_json_formats():
    rows = [row("a|b", steps=1, changed={"model.widths": [16, 32]}, test={"e-test": {"fd": float("nan")}})]
    markdown = runs_table(rows, fmt="markdown").splitlines()
    assert markdown[0].startswith("| recipe | name | status | changed |") and markdown[1].startswith("|---|")
    assert "| a\\|b | finished | model.widths=[16,32] |" in markdown[2]
    assert json.loads(runs_table(rows, fmt="json"))[0]["test"] == {"e-test": {"fd": None}}  # strict JSON: NaN as null
    with pytest.raises(ConfigError, match="--format 'html'"):
        runs_table(rows, fmt="html")


def test_a_run_records_the_config_file_it_started_from_and_a_resume_keeps_it(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("train:\n  lr: 0.02\n")
    plan = prepare_training("digit4", runs_root=tmp_path / "runs", name="default")
    assert yaml.safe_load((plan.run_dir / "config.yaml").read_text())["config_file"] == "digit4"
    plan = prepare_training("digit4", config_path=mine, runs_root=tmp_path / "runs", name="mine")
    assert yaml.safe_load((plan.run_dir / "config.yaml").read_text())["config_file"] == str(mine.resolve())
    (plan.run_dir / "checkpoints").mkdir()
    (plan.run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    prepare_training("digit4", resume=str(plan.run_dir), overrides=["train.epochs=3"], runs_root=tmp_path / "runs")
    doc = yaml.safe_load((plan.run_dir / "config.yaml").read_text())
    assert doc["config_file"] == str(mine.resolve()) and doc["resumed_from"]


# --- the CLI ---------------------------------------------------------------------------------------------
def test_runs_ls_prints_the_table_and_names_what_it_left_out(cli, tmp_path):
    write_run(tmp_path / "digit4" / "low", records=two_epochs((0.5, 0.1)))
    write_run(tmp_path / "digit4" / "high", records=two_epochs((0.5, 0.4)))
    (tmp_path / "digit4" / "broken").mkdir()
    (tmp_path / "digit4" / "broken" / "config.yaml").write_text("recipe: [\n")
    code, out, err = cli("runs", "ls", tmp_path, "--format", "json", "--sort", "best", "--desc")
    assert code == 0 and [run["name"] for run in json.loads(out)] == ["high", "low"]
    assert "1 run dir(s) left out" in err and "broken/config.yaml: not valid YAML" in err
    code, out, _ = cli("runs", "compare", tmp_path / "digit4" / "low", tmp_path / "digit4" / "high")
    assert code == 0 and [line.split()[1] for line in out.splitlines()] == ["name", "low", "high"]


def test_runs_compare_of_a_path_that_holds_no_run_is_one_line(cli, tmp_path):
    code, _, err = cli("runs", "compare", tmp_path)
    assert code == 2 and err.startswith("error:") and "not a run directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("runs", "ls", tmp_path / "nowhere")
    assert code == 2 and f"{tmp_path / 'nowhere'}: no such directory" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("recipe: [\n")
    code, _, err = cli("runs", "compare", tmp_path / "broken")
    assert code == 2 and f"{tmp_path / 'broken' / 'config.yaml'}: not valid YAML" in err
