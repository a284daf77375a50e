"""Recipe configs: the dataclasses are the one source of defaults, a YAML holds only its choices, and
every config field documents itself (the help of `genflow config RECIPE --keys`). No training."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

from genflow.config import config_from_dict, config_to_dict, field_help, load_config
from genflow.engine import TrainConfig
from genflow.engine.recipe import available_recipes

RECIPES = available_recipes()
RECIPE_DIRS = {cls.default_config.parent for cls in RECIPES.values()}


def _config_class_of(path: Path) -> type:
    """The recipe whose default YAML this is; an alternative YAML (`mmnist_wm_full.yaml`) belongs to the
    recipe with the longest default-YAML stem it starts with (`mmnist_wm.yaml`)."""
    owners = [cls for cls in RECIPES.values() if cls.default_config == path]
    if not owners:
        prefixed = [cls for cls in RECIPES.values() if path.stem.startswith(cls.default_config.stem + "_")]
        owners = sorted(prefixed, key=lambda cls: len(cls.default_config.stem))[-1:]
    assert owners, f"{path.name}: no recipe owns it (name it <recipe default YAML stem>_<variant>.yaml)"
    return owners[0].config_class


YAMLS = sorted(p for d in RECIPE_DIRS for p in d.glob("*.yaml"))


def _resolved(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    return config_to_dict(config_from_dict(cls, data))


def _entries(data: dict[str, Any], prefix: tuple[str, ...] = ()):
    """Every key path of a nested mapping: sections and leaves."""
    for key, value in data.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _entries(value, prefix + (key,))


def _without(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _config_classes() -> list[type]:
    """Every dataclass reachable from a recipe's config class (sections, nested sections, TrainConfig)."""
    found: list[type] = []
    todo = [cls.config_class for cls in RECIPES.values()]
    while todo:
        cls = todo.pop(0)
        if cls in found:
            continue
        found.append(cls)
        for hint in get_type_hints(cls).values():
            todo += [t for t in (hint, *get_args(hint)) if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return found


def test_every_recipe_has_its_yamls():
    assert {cls.default_config for cls in RECIPES.values()} <= set(YAMLS)


def _layered(defaults: Any, choices: Any) -> Any:
    """`choices` (a YAML's nested mapping) on top of `defaults` (a resolved config as a dict), section by section."""
    if not isinstance(choices, dict) or not isinstance(defaults, dict):
        return choices
    return {**defaults, **{key: _layered(defaults.get(key), value) for key, value in choices.items()}}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_loads_into_its_config_class(path):
    # every value the YAML sets arrives in the config, and every key it leaves out keeps the recipe's default:
    # the config equals one built from every key written out, the YAML's values laid over the recipe's defaults
    # (built, so that the config's own spellings apply: precision fp32 -> no, graph 8012 -> 80_12)
    cls = _config_class_of(path)
    choices = yaml.safe_load(path.read_text()) or {}
    config = load_config(cls, path)
    assert isinstance(config, cls) and isinstance(config.train, TrainConfig)
    assert config_to_dict(config) == _resolved(cls, _layered(config_to_dict(cls()), choices))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_holds_only_choices_that_differ_from_the_defaults(path):
    # A key (or section) repeats a default when deleting it leaves the resolved config unchanged. A section
    # is layered on its field's own default (a `train:` section changes the recipe's _default_train, not
    # bare TrainConfig), so a key equal to the recipe's train default counts as a repeat too.
    cls = _config_class_of(path)
    data = yaml.safe_load(path.read_text()) or {}
    resolved = _resolved(cls, data)
    repeats = [".".join(key) for key in _entries(data) if _resolved(cls, _without(data, key)) == resolved]
    assert not repeats, f"{path.name}: these keys only repeat the dataclass defaults, delete them: {', '.join(repeats)}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_header_points_at_the_keys_listing(path):
    assert "genflow config" in path.read_text() and "--keys" in path.read_text()


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_config_field_has_a_help_comment(cls):
    undocumented = [name for name, text in field_help(cls).items() if not text.strip()]
    assert not undocumented, f"{cls.__qualname__}: fields without a `# help` comment: {', '.join(undocumented)}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_header_declares_its_hardware_and_purpose(path):
    from genflow.engine.card import config_header

    header = config_header(path)
    assert header.hardware in ("cpu", "gpu") and header.purpose, f"{path.name}: add '# hardware: cpu|gpu' and '# purpose: ...'"
