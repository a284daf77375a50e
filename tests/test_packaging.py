"""Packaging: genflow's recipes install as `genflow_recipes`, and every package ships in the wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def user_recipes_dir(tmp_path: Path) -> Path:
    """A working directory holding the user's own `recipes` package (a torchtune checkout, say)."""
    package = tmp_path / "recipes"
    package.mkdir()
    # importing it leaves a mark; importing its digit4 fails outright
    (package / "__init__.py").write_text("from pathlib import Path\nPath(__file__).with_name('IMPORTED').touch()\n")
    (package / "digit4.py").write_text("raise RuntimeError(\"the user's recipes.digit4 was imported\")\n")
    return tmp_path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # `python -m` and `python -c` both put the working directory first on sys.path
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_genflow_recipes_ignores_a_local_recipes_package(user_recipes_dir):
    result = _run(["-m", "genflow.cli", "recipes"], user_recipes_dir)
    assert result.returncode == 0, result.stderr
    assert "digit4" in result.stdout
    assert not (user_recipes_dir / "recipes" / "IMPORTED").exists()


def test_get_recipe_ignores_a_local_recipes_package(user_recipes_dir):
    code = ("import sys; from genflow.engine.recipe import get_recipe; cls = get_recipe('digit4'); "
            "print(cls.__module__, sys.path[0] == '', 'recipes' in sys.modules)")
    result = _run(["-c", code], user_recipes_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["genflow_recipes.digit4.recipe", "True", "False"]
    assert not (user_recipes_dir / "recipes" / "IMPORTED").exists()


def test_every_package_directory_is_in_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    roots = {"genflow": "genflow", **setuptools.get("package-dir", {})}
    found = set()
    for package, directory in roots.items():
        root = REPO / directory
        for module in root.rglob("*.py"):
            # a directory of modules, with or without __init__.py, is a package the wheel must list
            found.add(".".join([package, *module.parent.relative_to(root).parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert (REPO / "recipes" / "__init__.py").is_file()


def test_the_wheel_ships_every_recipe_s_configs_and_cards(tmp_path):
    """Built as pip builds it: each recipe package's configs/*.yaml and card.py are in the wheel."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("genflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").glob("*/configs/*.yaml")}
    assert len(configs) >= 10
    assert {f"genflow_recipes/{c}" for c in configs} <= names
    packages = {p.parent.name for p in (REPO / "recipes").glob("*/__init__.py")}
    assert {f"genflow_recipes/{p}/card.py" for p in packages} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[genflow.recipe_cards]" in text and "namo-fm = genflow_recipes.namo.card:FM_CARD" in text
