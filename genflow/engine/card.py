"""Recipe cards: what `genflow recipes` and `--config NAME` need of a recipe, readable without importing it.

Importing a recipe imports torch and its model code (seconds), so each recipe also declares a small
`RecipeCard` in a torch-free module (a recipe package's `__init__.py`) and registers it under the
entry-point group `genflow.recipe_cards`, beside its `genflow.recipes` entry point:

    [project.entry-points."genflow.recipes"]
    rings = "my_recipes.rings.recipe:RingsRecipe"
    [project.entry-points."genflow.recipe_cards"]
    rings = "my_recipes.rings:CARD"

The recipe class points at the same card (`card = CARD`), which sets its name, summary, default
config and aliases: one declaration of each. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genflow.errors import ConfigError
from genflow.lazy import lazy_exports

__all__ = ["RecipeCard", "ConfigHeader", "config_header", "lazy_exports"]

HARDWARE = ("cpu", "gpu")


@dataclass(frozen=True)
class ConfigHeader:
    """What a config's leading comments declare: `# hardware: cpu|gpu` (what it is sized for) and
    `# purpose: one line` (what `genflow recipes --configs` shows)."""

    hardware: str | None
    purpose: str | None


def config_header(path: Path) -> ConfigHeader:
    """The `# hardware:` and `# purpose:` lines of a YAML's leading comment block (None where absent)."""
    found: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line.lstrip("#").strip().partition(":")
        if sep and key in ("hardware", "purpose") and key not in found:
            found[key] = value.strip()
    hardware = found.get("hardware")
    if hardware is not None and hardware not in HARDWARE:
        raise ConfigError(f"{path}: '# hardware: {hardware}': expected one of {', '.join(HARDWARE)}")
    return ConfigHeader(hardware=hardware, purpose=found.get("purpose"))


@dataclass(frozen=True)
class RecipeCard:
    """A recipe's name, one-line summary, YAML configs (the first is its default) and other names."""

    name: str  # what `genflow train NAME` takes
    summary: str
    configs: tuple[Path, ...]  # the recipe's configs, shipped with it; `--config STEM` names one
    aliases: tuple[str, ...] = ()  # other names `genflow train` accepts (e.g. a source trainer's name)

    @property
    def default_config(self) -> Path | None:
        return self.configs[0] if self.configs else None

    def config_names(self) -> list[str]:
        return [path.stem for path in self.configs]

    def resolve_config(self, given: str | Path) -> Path:
        """The config file `--config` names: a path that exists, else one of this recipe's configs by name
        (`mmnist_wm_fast`, `mmnist_wm_fast.yaml`, or the path it had before configs moved into the recipe
        packages, `recipes/mmnist_wm_fast.yaml`). Anything else is one clear error listing the names."""
        path = Path(given)
        if path.is_file():
            return path
        for config in self.configs:
            if path.stem == config.stem and (path.suffix in ("", ".yaml", ".yml")):
                if len(path.parts) == 1 or path.parent.name == "recipes":
                    return config
        raise ConfigError(f"--config {given}: no such file, and not a config of recipe '{self.name}' "
                          f"(its configs: {', '.join(self.config_names())})")
