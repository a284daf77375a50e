"""namo-fm and namo-diffusion: a DiT generates where to push the object that blocks a robot (NAMO goal masks).

`recipe.py` the two recipes and their network head; `sage_dit.py` the source's DiT (configs `namo_*_source`);
`scenes.py` the procedural scene world and its grid planner (`genflow data make namo`); `importer.py` a user's
scene `.npz` files -> shards (`genflow data import namo DIR`); `metrics.py` placement quality (overlap, validity,
mode coverage, of raw samples and of accepted proposals); `poses.py` goal poses (x, y, θ) from samples, as the
source hands them to a robot; `sage_import.py` a sage_learning run -> a genflow run (`genflow runs import
sage-learning`); `data_commands.py` the two data commands; `configs/` the YAML configs.

    from genflow.engine import load_run
    from genflow_recipes.namo import propose_goal_poses
    run = load_run("runs/namo-fm/NAME")
    per_scene = propose_goal_poses(run.recipe, run.model, context, samples_per_scene=32)  # context (N, 5, S, S)
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.namo.card import DIFFUSION_CARD, FM_CARD

__getattr__, __dir__ = lazy_exports(__name__, {"NamoFlowMatchingRecipe": ".recipe", "NamoDiffusionRecipe": ".recipe",
                                               "NamoGoalNet": ".recipe", "propose_goal_poses": ".poses",
                                               "accept_proposals": ".poses", "SageDiT": ".sage_dit"})
__all__ = ["DIFFUSION_CARD", "FM_CARD", "NamoFlowMatchingRecipe", "NamoDiffusionRecipe", "NamoGoalNet", "propose_goal_poses",
           "accept_proposals", "SageDiT"]
