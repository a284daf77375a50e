"""What loads on first use: lazy re-exports for a package whose `__init__` must stay light (no torch: a recipe
package's, the data package's; PEP 562), and the plugins installed under an entry-point group."""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from genflow.errors import GenflowError

__all__ = ["lazy_exports", "registered", "pick_registered"]

T = TypeVar("T")


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for a recipe package whose `__init__` must stay torch-free: `names` maps
    an attribute to the submodule (relative, e.g. ".recipe") that defines it, imported on first use, so
    `from genflow_recipes.dtm import train_from_iterator` works and listing recipes imports no torch."""

    def __getattr__(attr: str) -> Any:
        if attr not in names:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(importlib.import_module(names[attr], package), attr)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__


def registered(group: str, kind: type[T]) -> dict[str, T]:
    """The objects installed under the entry-point `group`, by entry-point name, sorted; each must be a `kind`
    (a wrong one is one line naming the entry point)."""
    found: dict[str, T] = {}
    for ep in entry_points(group=group):
        value = ep.load()
        if not isinstance(value, kind):
            raise GenflowError(f"entry point '{ep.name} = {ep.value}' ({group}): expected a "
                               f"{kind.__module__}.{kind.__qualname__}, got {type(value).__name__}")
        found[ep.name] = value
    return dict(sorted(found.items()))


def pick_registered(found: dict[str, T], name: str, what: str, listing: str = "") -> T:
    """`found[name]`; an unknown name is one line with the closest one (`what`: e.g. "data make kind")."""
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(found) or 'none installed'}"
        raise GenflowError(f"unknown {what} '{name}': {hint}{listing}")
    return found[name]
