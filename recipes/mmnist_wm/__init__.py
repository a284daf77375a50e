"""mmnist-wm: an action-conditioned world model of Moving MNIST by masked discrete diffusion (CoPilot4D-style).

`recipe.py` the recipe; `world.py` the Moving MNIST renderer with exact ego actions and the importer of
the canonical `mnist_test_seq.npy`; `model.py` the video transformer; `metrics.py` MSE / PSNR / SSIM
per horizon and the baselines; `data_commands.py` the data commands; `configs/` the CPU default and
the source's fast and full configs.
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.mmnist_wm.card import CARD

__getattr__, __dir__ = lazy_exports(__name__, {"MovingMnistWorldModelRecipe": ".recipe", "ablated_actions": ".recipe",
                                               "ACTION_CHOICES": ".recipe"})
__all__ = ["CARD", "MovingMnistWorldModelRecipe", "ablated_actions", "ACTION_CHOICES"]
