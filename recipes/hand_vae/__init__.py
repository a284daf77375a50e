"""hand-vae: VAE priors of two-hand MANO-style poses (flat Gaussian or SO(3) geodesic) with a ranking energy.

`recipe.py` the recipe; `skeleton.py` the hand skeleton, joint limits and synergy-family poses;
`grasps.py` poses solved so fingertips touch objects; `dataset.py` poses -> shards (generated, or a
user's MANO-style `.npz` files); `rotations.py` axis-angle / matrix / 6-D / Euler conversions;
`model.py` the VAE; `metrics.py` errors, corruption detection and hypothesis selection;
`data_commands.py` the data commands; `configs/` the YAML config.
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.hand_vae.card import CARD

__getattr__, __dir__ = lazy_exports(__name__, {"HandVaeRecipe": ".recipe", "HandVaeConfig": ".recipe"})
__all__ = ["CARD", "HandVaeRecipe", "HandVaeConfig"]
