"""Evaluation metrics."""

from genflow.metrics.chamfer import chamfer_distance, pairwise_chamfer
from genflow.metrics.point_sets import coverage_mmd_1nna, one_nn_accuracy

__all__ = ["chamfer_distance", "coverage_mmd_1nna", "one_nn_accuracy", "pairwise_chamfer"]
