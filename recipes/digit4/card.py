"""The recipe card of digit4: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

_CONFIGS = Path(__file__).parent / "configs"
CARD = RecipeCard(name="digit4", summary="point-cloud flow matching on MNIST 4s (PointNet + AdaLN-MLP, Chamfer)",
                  configs=(_CONFIGS / "digit4.yaml", _CONFIGS / "digit4_source.yaml"))
