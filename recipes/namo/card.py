"""The recipe cards of namo: torch-free, read by `genflow recipes` (entry-point group
`genflow.recipe_cards`) and by the recipe class itself."""

from pathlib import Path

from genflow.engine.card import RecipeCard

_CONFIGS = Path(__file__).parent / "configs"
FM_CARD = RecipeCard(name="namo-fm", summary="NAMO goal masks: DiT + flow matching (affine paths, ODE sampling)",
                     configs=(_CONFIGS / "namo_fm.yaml", _CONFIGS / "namo_fm_source.yaml"), aliases=("train_fb_flow_matching",))
DIFFUSION_CARD = RecipeCard(name="namo-diffusion",
                            summary="NAMO goal masks: DiT + DDPM training, DDIM / DDPM sampling (diffusers schedulers)",
                            configs=(_CONFIGS / "namo_diffusion.yaml", _CONFIGS / "namo_diffusion_source.yaml"), aliases=("train_hf_diffusion",))
