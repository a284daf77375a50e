"""Run directories written by an older genflow (tests/fixtures/runs/, made by tests/fixtures/make_runs.py at
the commit in MADE_BY) still sample, evaluate and export: a move of the code must not strand a user's runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from genflow.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_runs import DATA_KEY, RUNS, make_data  # noqa: E402

EVALUATION = {"digit4": "chamfer", "namo-fm": "namo", "namo-diffusion": "namo", "mmnist-wm": "video", "dtm": "dtm",
              "hand-vae": "hands", "hand-vae-so3": "hands"}
EVAL_OPTIONS = {"dtm": ["eval.classifier_epochs=1", "eval.num_images=20"], "hand-vae": ["eval.poses=40"], "hand-vae-so3": ["eval.poses=40"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fixture-data"))


def _copy(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(FIXTURES / "runs" / name, run)
    return run


def _data_override(name: str, data: dict[str, Path]) -> list[str]:
    dataset = RUNS[name][0]
    recipe = "hand-vae" if name.startswith("hand-vae") else name
    return [f"{DATA_KEY.get(recipe, 'data.data_dir')}={data[dataset]}"] if dataset else []


@pytest.mark.parametrize("name", sorted(RUNS))
def test_an_older_run_dir_samples_evaluates_and_exports(name, data, tmp_path, capsys):
    run = _copy(name, tmp_path)
    override = _data_override(name, data)
    assert main(["sample", str(run), "--checkpoint", "last", "n=2", *override]) == 0, capsys.readouterr().err
    if name in EVALUATION:
        capsys.readouterr()
        code = main(["eval", EVALUATION[name], str(run), "--checkpoint", "last", "--json", "limit=8",
                     *EVAL_OPTIONS.get(name, []), *override])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out.strip().splitlines()[-1])
    # dtm reads its image shape and label count from the dataset, so its export is pointed at the data too
    assert main(["export", str(run), *override, "--checkpoint", "last", "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()
