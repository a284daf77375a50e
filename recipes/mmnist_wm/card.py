"""The recipe card of mmnist-wm: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

_CONFIGS = Path(__file__).parent / "configs"
CARD = RecipeCard(name="mmnist-wm",
                  summary="Moving MNIST world model: masked discrete diffusion (CoPilot4D), MaskGIT decoding, actions",
                  configs=(_CONFIGS / "mmnist_wm.yaml", _CONFIGS / "mmnist_wm_fast.yaml", _CONFIGS / "mmnist_wm_full.yaml"),
                  aliases=("train_mnist_fast", "train_mnist_full"))
