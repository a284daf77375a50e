"""Networks. A model never knows the noise schedule or the objective it is trained with."""

from genflow.models.adaln_mlp import (AdaLNMLP, AdaLNMLPVelocityField, AdaLNResidualBlock, PlainAdaLNMLPVelocityField,
                                      VectorVelocityField)
from genflow.models.dit import DiT, PatchEmbedding, check_dit_sizes, self_attention
from genflow.models.embeddings import SinusoidalTimeEmbedding, TimestepMLP
from genflow.models.pointnet import PointNetEncoder

__all__ = [
    "AdaLNMLP",
    "AdaLNMLPVelocityField",
    "AdaLNResidualBlock",
    "DiT",
    "PatchEmbedding",
    "PlainAdaLNMLPVelocityField",
    "check_dit_sizes",
    "self_attention",
    "PointNetEncoder",
    "SinusoidalTimeEmbedding",
    "TimestepMLP",
    "VectorVelocityField",
]
