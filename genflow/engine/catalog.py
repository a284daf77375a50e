"""The installed recipes, listed from their cards without importing them (or torch).

Each `genflow.recipes` entry point names a recipe class; a `genflow.recipe_cards` entry point of the
same name names its `RecipeCard` (genflow.engine.card), declared in a torch-free module. `genflow
recipes`, `--config NAME` and alias look-ups read the cards; only a recipe without a card (a
third-party package that declares none) is imported to be listed.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from genflow.engine.card import RecipeCard
from genflow.errors import GenflowError

__all__ = ["RecipeEntry", "recipe_entries", "find_recipe"]

RECIPES_GROUP = "genflow.recipes"
CARDS_GROUP = "genflow.recipe_cards"


@dataclass(frozen=True)
class RecipeEntry:
    """One installed recipe: its entry point and its card."""

    name: str  # the entry-point name: what `genflow train NAME` takes
    module: str  # e.g. "genflow_recipes.digit4.recipe"
    class_name: str  # e.g. "Digit4Recipe"
    card: RecipeCard

    @property
    def summary(self) -> str:
        return self.card.summary

    @property
    def default_config(self) -> Path:
        return self.card.default_config

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.card.aliases

    def load(self) -> type:
        """The recipe class (this imports the recipe module, and so torch)."""
        return getattr(importlib.import_module(self.module), self.class_name)


def recipe_entries() -> list[RecipeEntry]:
    """Every recipe of the `genflow.recipes` entry-point group, sorted by name (a later entry point of a
    name replaces an earlier one)."""
    cards = {ep.name: ep for ep in entry_points(group=CARDS_GROUP)}
    found: dict[str, RecipeEntry] = {}
    for ep in entry_points(group=RECIPES_GROUP):
        card = _card(cards[ep.name]) if ep.name in cards else _card_of_class(ep)
        found[ep.name] = RecipeEntry(name=ep.name, module=ep.module, class_name=ep.attr, card=card)
    return [found[name] for name in sorted(found)]


def find_recipe(name: str) -> RecipeEntry:
    """The recipe called `name`, or whose card lists `name` among its aliases; an unknown name is one
    clear error with the closest name."""
    entries = recipe_entries()
    for entry in entries:
        if name == entry.name or name in entry.aliases:
            return entry
    names = [entry.name for entry in entries]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"available: {', '.join(names) or 'none installed'}"
    raise GenflowError(f"unknown recipe '{name}': {hint} (see `genflow recipes`)")


def _card(ep) -> RecipeCard:
    card = ep.load()
    if not isinstance(card, RecipeCard):
        raise GenflowError(f"entry point '{ep.name} = {ep.value}' ({CARDS_GROUP}): expected a "
                           f"genflow.engine.RecipeCard, got {type(card).__name__}")
    return card


def _card_of_class(ep) -> RecipeCard:
    """A card made from a recipe class that declares none (imports it)."""
    cls = ep.load()
    if getattr(cls, "card", None) is not None:
        return cls.card
    default = getattr(cls, "default_config", None)
    return RecipeCard(name=ep.name, summary=getattr(cls, "summary", ""), configs=(Path(default),) if default else (),
                      aliases=tuple(getattr(cls, "aliases", ())))
