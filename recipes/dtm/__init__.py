"""dtm and dtm-lunar: Denoising Thermodynamic Models (chained Ising models, block Gibbs training).

`recipe.py` dtm on labelled image shards (`genflow data make mnist-images`); `lunar.py` dtm-lunar, which
trains from a stream of LunarLander-v3 frames, and `train_from_iterator` for any iterable of images;
`configs/` the CPU default, the paper-scale config and dtm-lunar's. The model, graph and sampler are the
library's Ising stack (`genflow.ising`).
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.dtm.card import CARD, LUNAR_CARD

__getattr__, __dir__ = lazy_exports(__name__, {"DtmRecipe": ".recipe", "DtmConfig": ".recipe", "image_levels": ".fd",
                                               "DtmLunarRecipe": ".lunar", "train_from_iterator": ".lunar",
                                               "LunarLanderFrames": ".lunar"})
__all__ = ["CARD", "LUNAR_CARD", "DtmRecipe", "DtmConfig", "image_levels", "DtmLunarRecipe", "train_from_iterator",
           "LunarLanderFrames"]
