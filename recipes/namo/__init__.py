"""namo-fm and namo-diffusion: a DiT generates where to push the object that blocks a robot (NAMO goal masks).

`recipe.py` the two recipes and their network head; `scenes.py` the procedural scene world and its
grid planner (`genflow data make namo`); `importer.py` a user's scene `.npz` files -> shards
(`genflow data import namo DIR`); `metrics.py` placement quality (overlap, validity, mode coverage);
`data_commands.py` the two data commands; `configs/` the YAML configs.
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.namo.card import DIFFUSION_CARD, FM_CARD

__getattr__, __dir__ = lazy_exports(__name__, {"NamoFlowMatchingRecipe": ".recipe", "NamoDiffusionRecipe": ".recipe",
                                               "NamoGoalNet": ".recipe"})
__all__ = ["DIFFUSION_CARD", "FM_CARD", "NamoFlowMatchingRecipe", "NamoDiffusionRecipe", "NamoGoalNet"]
