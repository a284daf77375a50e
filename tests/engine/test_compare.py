"""genflow.engine.compare (`genflow eval compare`): every run at each of its recipe's sampler settings, with
the same options, into one table, JSON and plot. The runs are fakes of a recipe whose evaluation only
reports what it was asked; no training, no sampling."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

from genflow.engine import compare
from genflow.engine.compare import compare_runs
from genflow.engine.recipe import EvalOptions, OdeSolverOptions, Recipe, evaluation
from genflow.engine.run_dir import LoadedRun


@dataclass
class QualityOptions(OdeSolverOptions, EvalOptions):
    figure: bool = True  # as namo's: compare turns it off through compare_defaults


class SamplerRecipe(Recipe):
    name = "samplers"
    summary = "a recipe with two sampler settings to compare"
    config_class = dict
    compare_metrics = ("validity", "iou")
    compare_defaults = {"limit": 5, "figure": False}

    def compare_settings(self):
        return [("euler", 4), ("midpoint", 2)]

    @evaluation("quality", QualityOptions)  # the main (first) evaluation: what compare runs
    def eval_quality(self, model, run_dir, device, options):
        nfe = options.steps * (2 if options.solver == "midpoint" else 1)
        return {"sampler": options.solver, "steps": options.steps, "nfe": nfe, "validity": 1 / nfe, "iou": 0.5,
                "seconds": 0.25, "options": [options.limit, options.figure, options.split], "model": id(model),
                "run_dir": str(run_dir)}

    @evaluation("other")
    def eval_other(self, model, run_dir, device, options):
        raise AssertionError("compare runs the main evaluation only")


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """Two fake runs of SamplerRecipe; `loaded` lists what compare loaded (run dir, checkpoint)."""
    models, loaded = {}, []

    def load_run(run_dir, checkpoint="best", device="cpu"):
        loaded.append((Path(run_dir).name, checkpoint))
        model = models.setdefault(Path(run_dir).name, nn.Identity())
        return LoadedRun(run_dir=Path(run_dir), recipe=SamplerRecipe({}), model=model, checkpoint=Path(run_dir) / "best.pt", state={})

    monkeypatch.setattr(compare, "load_run", load_run)
    return [tmp_path / "run-a", tmp_path / "run-b"], models, loaded


def test_every_run_is_evaluated_at_each_sampler_setting_with_the_same_options(runs, tmp_path):
    run_dirs, models, loaded = runs
    result = compare_runs(run_dirs, tmp_path / "out", ["limit=3", "split=val"], checkpoint="last")
    rows = result["rows"]
    assert [(Path(r["run"]).name, r["recipe"], r["sampler"], r["steps"]) for r in rows] == [
        ("run-a", "samplers", "euler", 4), ("run-a", "samplers", "midpoint", 2),
        ("run-b", "samplers", "euler", 4), ("run-b", "samplers", "midpoint", 2)]
    assert all(r["options"] == [3, False, "val"] for r in rows)  # the user's values over the recipe's compare_defaults
    assert [r["model"] for r in rows] == [id(models["run-a"])] * 2 + [id(models["run-b"])] * 2
    assert loaded == [("run-a", "last"), ("run-b", "last")]


def test_a_given_solver_and_steps_replace_the_recipe_s_settings(runs, tmp_path):
    run_dirs, _, _ = runs
    rows = compare_runs(run_dirs, tmp_path / "out", ["solver=rk4", "steps=3"])["rows"]
    assert [(Path(r["run"]).name, r["sampler"], r["steps"], r["options"]) for r in rows] == [
        ("run-a", "rk4", 3, [5, False, "test"]), ("run-b", "rk4", 3, [5, False, "test"])]


def test_the_table_json_and_plot_hold_every_row(runs, tmp_path):
    run_dirs, _, _ = runs
    result = compare_runs(run_dirs, tmp_path / "out")
    out = tmp_path / "out"
    assert json.loads((out / "compare.json").read_text()) == result["rows"]
    lines = (out / "compare.md").read_text().splitlines()
    assert lines[0] == "| recipe | sampler | steps | nfe | validity | iou | seconds |" and lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2:] == ["| samplers | euler | 4 | 4 | 0.250 | 0.500 | 0.250 |", "| samplers | midpoint | 2 | 4 | 0.250 | 0.500 | 0.250 |"] * 2
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["table"].row_count == 4 and [c.header for c in result["table"].columns][-3:] == ["validity", "iou", "seconds"]
    assert (result["json"], result["markdown"], result["plot"]) == tuple(str(out / f"compare.{x}") for x in ("json", "md", "png"))


def test_without_out_the_comparison_goes_under_runs_compare_named_by_time(runs, tmp_path, monkeypatch):
    run_dirs, _, _ = runs
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(compare, "_plot", lambda rows, metrics, path: path.write_bytes(b"png"))  # the picture is tested above
    result = compare_runs(run_dirs)
    written = Path(result["json"])
    assert re.fullmatch(r"\d{8}-\d{6}", written.parent.name) and written.parent.parent == Path("runs") / "compare"
    assert (tmp_path / written).is_file()
