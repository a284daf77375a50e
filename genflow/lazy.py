"""Lazy re-exports for a package whose `__init__` must stay light (no torch): a recipe package's, the data
package's. A name is imported from its submodule on first use (PEP 562)."""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


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
