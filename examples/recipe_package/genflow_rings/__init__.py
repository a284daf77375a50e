"""genflow_rings: the smallest complete genflow recipe package (flow matching onto concentric rings).

This module stays torch-free: it only declares the recipe's card, which `genflow recipes` reads through
the `genflow.recipe_cards` entry point without importing the recipe (`rings.py`).
"""

from pathlib import Path

from genflow.engine.card import RecipeCard

CARD = RecipeCard(name="rings", summary="2-D flow matching onto concentric rings (the example recipe package)",
                  configs=(Path(__file__).parent / "configs" / "rings.yaml",))
