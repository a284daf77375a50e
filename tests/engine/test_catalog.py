"""The recipe catalogue: each recipe's card says what importing the recipe gives, and is read without
importing it (or torch); `--config NAME` and aliases resolve through the cards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genflow.engine.card import RecipeCard
from genflow.engine.catalog import find_recipe, recipe_entries
from genflow.engine.recipe import available_recipes
from genflow.errors import ConfigError, GenflowError


def test_every_card_matches_its_imported_recipe_class():
    entries = recipe_entries()
    classes = available_recipes()
    assert [e.name for e in entries] == list(classes)
    for entry in entries:
        cls = classes[entry.name]
        assert (entry.module, entry.class_name) == (cls.__module__, cls.__name__)
        assert (cls.name, cls.summary, cls.default_config, cls.aliases) == (
            entry.name, entry.summary, entry.default_config, entry.aliases), entry.name
        assert all(path.is_file() for path in entry.card.configs), entry.name


def test_listing_recipes_and_data_commands_imports_no_torch():
    # recipes: read from the cards (no numpy, no recipe module); data commands: their options, no torch
    code = ("import json, sys; from genflow.engine.catalog import recipe_entries; entries = recipe_entries(); "
            "heavy = sorted(m for m in ('torch', 'numpy') if m in sys.modules); "
            "recipes = sorted(m for m in sys.modules if m.startswith('genflow_recipes.') and m.count('.') > 1 "
            "and not m.endswith('.card')); "
            "from genflow.data.registry import data_commands; data_commands('make'); data_commands('import'); "
            "print(json.dumps({'names': [e.name for e in entries], 'heavy': heavy, 'recipes': recipes, "
            "'torch_after_data': 'torch' in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert "digit4" in found["names"] and "namo-fm" in found["names"]
    assert found["heavy"] == [] and found["recipes"] == []
    assert found["torch_after_data"] is False


def test_an_alias_finds_its_recipe_and_an_unknown_name_suggests_the_closest():
    assert find_recipe("train_fb_flow_matching").name == "namo-fm"
    with pytest.raises(GenflowError, match="unknown recipe 'digit5': did you mean 'digit4'"):
        find_recipe("digit5")


def test_a_config_is_named_by_its_stem_its_file_name_or_its_path_before_the_move(tmp_path):
    card = find_recipe("mmnist-wm").card
    fast = next(path for path in card.configs if path.stem == "mmnist_wm_fast")
    assert card.resolve_config("mmnist_wm_fast") == fast
    assert card.resolve_config("mmnist_wm_fast.yaml") == fast
    assert card.resolve_config("recipes/mmnist_wm_fast.yaml") == fast  # the path it had in the source tree
    mine = tmp_path / "mmnist_wm_fast.yaml"
    mine.write_text("train: {epochs: 1}\n")
    assert card.resolve_config(mine) == mine  # a file of the user's wins over a config of the same name
    with pytest.raises(ConfigError, match="not a config of recipe 'mmnist-wm' \\(its configs: mmnist_wm, mmnist_wm_fast"):
        card.resolve_config("mmnist_wm_huge")
    with pytest.raises(ConfigError, match="no such file"):
        card.resolve_config(tmp_path / "elsewhere" / "mmnist_wm_fast.yaml")


def test_a_recipe_without_a_card_is_listed_from_its_class(monkeypatch):
    from importlib.metadata import EntryPoint

    import genflow.engine.catalog as catalog

    real = catalog.entry_points

    def with_one_more(group):
        found = list(real(group=group))
        if group == catalog.RECIPES_GROUP:
            found.append(EntryPoint("toy", "support:ToyRecipe", group))
        return found

    monkeypatch.setattr(catalog, "entry_points", with_one_more)
    entry = next(e for e in recipe_entries() if e.name == "toy")
    assert entry.summary == "engine test recipe" and entry.card.configs == ()
    assert isinstance(entry.card, RecipeCard) and entry.load().__name__ == "ToyRecipe"


def test_train_takes_a_config_by_name(cli, tmp_path):
    code, out, err = cli("train", "mmnist-wm", "--config", "mmnist_wm_fast", "--print-config", "--runs-dir", tmp_path)
    assert code == 0, err
    assert "train_sequences: 2000" in out and "epochs: 50" in out  # the fast config's, not the default's
    code, _, err = cli("train", "mmnist-wm", "--config", "mmnist_wm_huge", "--runs-dir", tmp_path)
    assert code == 2 and "its configs: mmnist_wm, mmnist_wm_fast, mmnist_wm_full" in err
