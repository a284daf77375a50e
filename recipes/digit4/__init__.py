"""digit4: point-cloud flow matching on real MNIST 4s (PointNet encoder, AdaLN-MLP velocity field, Chamfer).

Data: `genflow data make digit4` (the library's MNIST point-cloud maker, `genflow.data.point_clouds`).
"""

from genflow.engine.card import lazy_exports
from genflow_recipes.digit4.card import CARD

__getattr__, __dir__ = lazy_exports(__name__, {"Digit4Recipe": ".recipe", "Digit4Config": ".recipe", "Digit4Flow": ".recipe"})
__all__ = ["CARD", "Digit4Recipe", "Digit4Config", "Digit4Flow"]
