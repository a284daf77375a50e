"""Networks. A model never knows the noise schedule or the objective it is trained with."""

from genflow.models.adaln_mlp import AdaLNMLP, AdaLNMLPVelocityField, AdaLNResidualBlock, VectorVelocityField
from genflow.models.dit import DiT
from genflow.models.embeddings import SinusoidalTimeEmbedding, TimestepMLP
from genflow.models.pointnet import PointNetEncoder

__all__ = [
    "AdaLNMLP",
    "AdaLNMLPVelocityField",
    "AdaLNResidualBlock",
    "DiT",
    "PointNetEncoder",
    "SinusoidalTimeEmbedding",
    "TimestepMLP",
    "VectorVelocityField",
]
