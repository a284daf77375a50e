"""The recipe card of hand-vae: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

_CONFIGS = Path(__file__).parent / "configs"
CARD = RecipeCard(name="hand-vae",
                  summary="VAE priors of two-hand MANO-style poses (flat Gaussian or SO(3) geodesic) with a ranking energy",
                  configs=(_CONFIGS / "hand_vae.yaml", _CONFIGS / "hand_vae_source.yaml"), aliases=("train_hand_vae_lightning",))
