"""A recipe package of one's own (examples/recipe_package) works through the CLI with no change to genflow:
installed by pip into a throw-away directory, it brings a recipe, its sample options, an evaluation and
a data maker through its own entry points."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genflow.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "recipe_package"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PACKAGE)], check=True, capture_output=True)
    return target


@pytest.fixture
def cli(installed, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(installed))

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_a_recipe_package_drives_every_command(cli, tmp_path):
    data, runs = tmp_path / "rings", tmp_path / "runs"
    code, out, err = cli("data", "list")
    assert code == 0 and "genflow data make rings" in out, err
    assert cli("data", "make", "rings", f"out={data}", "n=2000", "seed=1")[0] == 0
    code, out, _ = cli("config", "rings", "--keys")
    assert code == 0 and "model.hidden" in out and "width of the velocity field" in out
    code, out, _ = cli("config", "rings", "train.epochs=7")
    assert code == 0 and "epochs: 7" in out and "best_metric: ring_error" in out
    code, _, err = cli("train", "rings", "--runs-dir", runs, "--name", "t", "--no-progress", f"data.data_dir={data}",
                       "train.epochs=4", "train.batch_size=64", "train.lr=0.01", "model.hidden=32")
    assert code == 0, err
    run = runs / "rings" / "t"
    code, out, err = cli("sample", run, "n=50", "steps=5", f"out={tmp_path / 's.npz'}")
    assert code == 0 and "points: 50" in out, err
    code, out, err = cli("eval", "ring", run, "--json", "split=test", "steps=20")
    result = json.loads(out)
    assert code == 0 and result["split"] == "test" and result["points"] == 200, err
    assert result["model_ring_error"] < 0.7 * result["gaussian_ring_error"]  # it moved the Gaussian towards the rings (0.62 measured)
    code, out, _ = cli("sample", run, "--help")
    assert code == 0 and "rings sample options" in out and "Euler steps" in out


def test_the_package_s_options_are_checked_like_config_keys(cli, tmp_path):
    code, _, err = cli("data", "make", "rings", f"out={tmp_path / 'r'}", "nosie=0.1")
    assert code == 2 and "unknown data make rings option 'nosie': did you mean noise?" in err
    code, _, err = cli("data", "make", "rings", "n=five")
    assert code == 2 and "'n': expected int, got 'five'" in err
    code, out, _ = cli("recipes")
    assert code == 0 and any(line.split("│")[1:2] == [" rings         "] or " rings " in line for line in out.splitlines())
