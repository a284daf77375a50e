"""The recipe catalogue: what importing each recipe class gives, without importing it (or torch)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from genflow.engine import catalog
from genflow.engine.catalog import recipe_entries
from genflow.engine.recipe import available_recipes


def _imported_values(cls: type) -> dict:
    return {"summary": cls.summary, "default_config": Path(cls.default_config), "aliases": tuple(cls.aliases)}


def _entry_values(entry: catalog.RecipeEntry) -> dict:
    return {"summary": entry.summary, "default_config": entry.default_config, "aliases": entry.aliases}


def test_catalogue_equals_the_imported_recipe_classes():
    entries = recipe_entries()
    classes = available_recipes()
    assert [e.name for e in entries] == list(classes)
    for entry in entries:
        cls = classes[entry.name]
        assert (entry.module, entry.class_name) == (cls.__module__, cls.__name__)
        assert _entry_values(entry) == _imported_values(cls), entry.name
        assert entry.default_config.is_file(), entry.name
        assert entry.load() is cls


def test_catalogue_imports_neither_torch_nor_the_recipes(tmp_path):
    code = ("import json, sys; from genflow.engine.catalog import recipe_entries; entries = recipe_entries(); "
            "print(json.dumps([len(entries), sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'genflow_recipes') and m != 'genflow_recipes')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    count, imported = json.loads(out.stdout)
    assert count == len(available_recipes())
    assert imported == []


# Recipe classes written the ways a third-party recipe might be. Each module is named per case so
# sys.modules tells whether the catalogue imported it.
_CASES = {
    # C3 order: Toy, Other, Mixin, Base (a depth-first search would find Base's summary first)
    "diamond": """
        class Base(Recipe):
            summary = "base"
            default_config = Path(__file__).parent / "configs" / "base.yaml"
        class Mixin(Base):
            summary = "mixin"
            aliases: ClassVar[tuple[str, ...]] = ALIASES
        class Other(Base):
            pass
        class Toy(Other, Mixin):
            name = "toy"
    """,
    "inherits_genflow_defaults": """
        class Toy(recipe.Recipe):
            summary = ("split "
                       "over lines")
            default_config = pathlib.Path(__file__).with_suffix(".yaml")
    """,
    "computed_summary": """
        class Toy(Recipe):
            summary = " ".join(["made", "at", "import"])
            default_config = Path(__file__).with_name("toy.yaml")
    """,
    "decorated": """
        def tag(cls):
            cls.aliases = ("tagged",)
            return cls
        @tag
        class Toy(Recipe):
            summary = "decorated"
            default_config = Path(__file__).with_name("toy.yaml")
    """,
    "init_subclass_hook": """
        class Base(Recipe):
            def __init_subclass__(cls, **kwargs):
                super().__init_subclass__(**kwargs)
                cls.aliases = (cls.__name__.lower(),)
        class Toy(Base):
            summary = "hooked"
            default_config = Path(__file__).with_name("toy.yaml")
    """,
    "conditional_attribute": """
        class Toy(Recipe):
            summary = "plain"
            if ALIASES:
                summary = "conditional"
            default_config = Path(__file__).with_name("toy.yaml")
    """,
}
_HEADER = """
from pathlib import Path
import pathlib
from typing import ClassVar
from genflow.engine import recipe
from genflow.engine.recipe import Recipe
ALIASES = ("first", "second")
"""
_PARSED = {"diamond", "inherits_genflow_defaults"}  # the others are imported


@pytest.mark.parametrize("case", sorted(_CASES))
def test_third_party_recipe_matches_its_imported_class(case, tmp_path, monkeypatch):
    module = f"genflow_test_catalog_{case}"
    (tmp_path / f"{module}.py").write_text(_HEADER + textwrap.dedent(_CASES[case]))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    ep = EntryPoint(name="toy", value=f"{module}:Toy", group="genflow.recipes")
    monkeypatch.setattr(catalog, "entry_points", lambda group: [ep])

    (entry,) = recipe_entries()
    assert (module in sys.modules) == (case not in _PARSED)
    assert _entry_values(entry) == _imported_values(ep.load())
    monkeypatch.delitem(sys.modules, module)
