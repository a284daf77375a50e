"""The recipe cards of dtm: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

_CONFIGS = Path(__file__).parent / "configs"
CARD = RecipeCard(name="dtm",
                  summary="Denoising Thermodynamic Model: chained Ising models on torus graphs, block Gibbs training (MNIST)",
                  configs=(_CONFIGS / "dtm.yaml", _CONFIGS / "dtm_paper.yaml", _CONFIGS / "dtm_fig5b.yaml",
                           _CONFIGS / "dtm_fig5a.yaml"))
LUNAR_CARD = RecipeCard(name="dtm-lunar", summary="DTM trained from a stream of LunarLander-v3 frames rendered in "
                        "background workers (no dataset on disk)", configs=(_CONFIGS / "dtm_lunar.yaml",))
