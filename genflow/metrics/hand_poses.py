"""Ranking hand poses: corruptions of real poses, AUROC of an energy, the Gaussian (PCA / Mahalanobis) prior.

Corruptions (each keeps the pose a valid 90-vector; the clean pose is the positive class):

* ``joint_limits``: 1-3 joints bent past their anatomical limits (hyper-extension or over-flexion
  by 0.3-0.8 rad, or abduction 0.4-0.8 rad beyond the range);
* ``random_joint``: one joint replaced by a uniformly random rotation;
* ``mixed_families``: every finger of each hand taken from another random pose of the batch,
  breaking the coupling between fingers (poses of different grasp families mixed);
* ``noise_<s>``: Gaussian noise of s rad on all 90 numbers (s = 0.05, 0.1, 0.2).

`auroc(clean, corrupted)` = P(energy of a corrupted pose > energy of a clean one) (Mann-Whitney; 0.5 =
chance, 1 = every corrupted pose ranked worse). The classic hand prior, a Gaussian fitted to the
training poses, is :class:`GaussianPosePrior`: energy = its negative log-density, reconstruction =
projection on the top-k principal components, samples from the Gaussian.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genflow.data.hands import JOINT_LIMITS, joint_angles
from genflow.models.rotations import axis_angle_to_matrix, euler_zyx_to_matrix, geodesic_angle, matrix_to_axis_angle

__all__ = ["CORRUPTIONS", "corrupt", "auroc", "GaussianPosePrior", "per_joint_error_degrees"]

CORRUPTIONS = ("joint_limits", "random_joint", "mixed_families", "noise_0.05", "noise_0.1", "noise_0.2")
_MIRROR = np.array([1.0, -1.0, -1.0])


def _from_angles(angles: np.ndarray) -> np.ndarray:
    """(N, 30, 3) right-frame (flexion, abduction, twist) -> (N, 90) axis-angle (left re-mirrored)."""
    aa = matrix_to_axis_angle(euler_zyx_to_matrix(torch.from_numpy(angles))).numpy()
    aa[:, :15] *= _MIRROR
    return aa.reshape(len(aa), 90)


def corrupt(poses: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Corrupted copies of poses (N, 90) (see the module docstring)."""
    n = len(poses)
    if kind.startswith("noise_"):
        return poses + rng.normal(0, float(kind.split("_")[1]), poses.shape)
    if kind == "random_joint":
        out = poses.reshape(n, 30, 3).copy()
        axis = rng.normal(size=(n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        # angle with density ∝ (1 - cos θ) on [0, π]: uniform rotations (rejection sampling)
        angle = np.empty(n)
        todo = np.arange(n)
        while todo.size:
            t, u = rng.uniform(0, np.pi, todo.size), rng.uniform(0, 2, todo.size)
            keep = u < 1 - np.cos(t)
            angle[todo[keep]] = t[keep]
            todo = todo[~keep]
        out[np.arange(n), rng.integers(30, size=n)] = axis * angle[:, None]
        return out.reshape(n, 90)
    if kind == "mixed_families":
        out = poses.reshape(n, 2, 5, 9).copy()
        for hand in range(2):
            for finger in range(5):
                out[:, hand, finger] = poses.reshape(n, 2, 5, 9)[rng.permutation(n), hand, finger]
        return out.reshape(n, 90)
    if kind == "joint_limits":
        angles = joint_angles(poses).numpy()
        lim = np.concatenate([JOINT_LIMITS, JOINT_LIMITS])
        for i in range(n):
            for joint in rng.choice(30, size=rng.integers(1, 4), replace=False):
                dof = 0 if rng.random() < 0.6 else 1  # flexion or abduction
                beyond = rng.uniform(0.3, 0.8) if dof == 0 else rng.uniform(0.4, 0.8)
                low, high = lim[joint, dof]
                angles[i, joint, dof] = low - beyond if rng.random() < 0.5 else high + beyond
        return _from_angles(angles)
    raise ValueError(f"unknown corruption '{kind}' (known: {', '.join(CORRUPTIONS)})")


def auroc(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """P(corrupted > clean) + ½ P(tie) over all pairs (Mann-Whitney U / (n m))."""
    ordered = np.sort(np.asarray(clean, dtype=np.float64))
    bad = np.asarray(corrupted, dtype=np.float64)
    below = np.searchsorted(ordered, bad, side="left")
    ties = np.searchsorted(ordered, bad, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(ordered) * len(bad)))


def per_joint_error_degrees(poses: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(N, 30) geodesic angle in degrees between the joints of two pose sets."""
    a = axis_angle_to_matrix(poses.reshape(-1, 30, 3).double())
    b = axis_angle_to_matrix(recon.reshape(-1, 30, 3).double())
    return torch.rad2deg(geodesic_angle(a, b))


class GaussianPosePrior:
    """A full-covariance Gaussian on the 90 axis-angle numbers (the classic PCA / Mahalanobis hand prior)."""

    def __init__(self, poses: np.ndarray, components: int = 24, shrinkage: float = 1e-4):
        x = np.asarray(poses, dtype=np.float64)
        self.mean = x.mean(0)
        cov = np.cov(x, rowvar=False) + shrinkage * np.eye(x.shape[1])
        values, vectors = np.linalg.eigh(cov)
        self.values, self.vectors = values[::-1], vectors[:, ::-1]
        self.components = components
        self.precision = np.linalg.inv(cov)
        self.log_norm = 0.5 * (np.linalg.slogdet(cov)[1] + x.shape[1] * math.log(2 * math.pi))
        self.chol = np.linalg.cholesky(cov)

    def energy(self, poses: np.ndarray) -> np.ndarray:
        d = np.asarray(poses, dtype=np.float64) - self.mean
        return 0.5 * np.einsum("ni,ij,nj->n", d, self.precision, d) + self.log_norm

    def reconstruct(self, poses: np.ndarray) -> np.ndarray:
        basis = self.vectors[:, : self.components]
        d = np.asarray(poses, dtype=np.float64) - self.mean
        return self.mean + (d @ basis) @ basis.T

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.mean + rng.normal(size=(n, len(self.mean))) @ self.chol.T
