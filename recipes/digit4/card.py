"""The recipe card of digit4: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

CARD = RecipeCard(name="digit4", summary="point-cloud flow matching on MNIST 4s (PointNet + AdaLN-MLP, Chamfer)",
                  configs=(Path(__file__).parent / "configs" / "digit4.yaml",))
