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

Hypothesis selection (what a hand prior is for): a pose estimator proposes several poses and the
prior keeps the lowest-energy one. :func:`make_hypotheses` builds, per held-out pose, the K = 11
hypotheses of `HYPOTHESIS_KINDS`:

* ``true`` (index 0): the pose itself;
* ``error_<s>`` (s = 5, 10, 20 degrees, two each): an estimator's error, not white noise on the 90
  numbers: every joint turned by a rotation about a random axis, larger on 1-3 random fingers of the
  10 (occlusion-like, x3) and towards the finger tips (proximal / middle / distal x 0.8 / 1 / 1.3),
  scaled so the expected mean per-joint geodesic error is s degrees;
* ``joint_limits`` (two): an ``error_10`` pose with the ``joint_limits`` corruption on top (1-3 joints
  past their limits): an estimator's output with an impossible joint. (Bent from the exact truth it
  would be ~2° away, closer than any estimator-like error, and the "best" estimator hypothesis would be
  an impossible pose.);
* ``swap``: the hands swapped, as an estimator that confuses left and right outputs. The left hand is
  stored as the mirror image (axis-angle (x, -y, -z)) of a right-hand articulation, so the swap moves
  each hand's articulation to the other side: new left = mirror(right), new right = mirror(left) (an
  involution; assigning the raw numbers to the other hand would bend the fingers backwards instead);
* ``other_family``: another held-out pose whose right-hand grasp family differs (families known, >= 0),
  else a random other pose.

:func:`select_hypotheses` scores a prior's picks (lowest energy, ties shared equally, so a constant
energy is exactly the uniform pick): top-1 = the pick is a lowest-error hypothesis (with the truth
among them: the truth), the mean geodesic error (degrees, :func:`hypothesis_errors`) of the pick and
of the best possible pick (oracle), and the share of picks per kind. `HYPOTHESIS_SETTINGS` names the
subsets of kinds it is scored on: ``all``; ``local`` without ``swap`` and ``other_family``, which are
real poses (plausible, only wrong for this image: an unconditional prior cannot reject them, only an
image likelihood can); ``est`` = ``local`` without the truth (an estimator never outputs it exactly).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genflow_recipes.hand_vae.skeleton import JOINT_LIMITS, joint_angles
from genflow_recipes.hand_vae.rotations import axis_angle_to_matrix, euler_zyx_to_matrix, geodesic_angle, matrix_to_axis_angle

__all__ = ["CORRUPTIONS", "corrupt", "auroc", "GaussianPosePrior", "per_joint_error_degrees", "HYPOTHESIS_KINDS", "HYPOTHESIS_SETTINGS",
           "make_hypotheses", "hypothesis_errors", "select_hypotheses", "estimator_like_error"]

CORRUPTIONS = ("joint_limits", "random_joint", "mixed_families", "noise_0.05", "noise_0.1", "noise_0.2")
_MIRROR = np.array([1.0, -1.0, -1.0])
HYPOTHESIS_KINDS = ("true", "error_5", "error_5", "error_10", "error_10", "error_20", "error_20", "joint_limits",
                    "joint_limits", "swap", "other_family")
HYPOTHESIS_SETTINGS = {"all": set(HYPOTHESIS_KINDS), "local": set(HYPOTHESIS_KINDS) - {"swap", "other_family"},
                       "est": set(HYPOTHESIS_KINDS) - {"swap", "other_family", "true"}}
_JOINT_LEVEL = np.array([0.8, 1.0, 1.3])  # proximal, middle, distal: estimators misjudge the small distal bones most
_OCCLUDED = 3.0  # error factor on the 1-3 "occluded" fingers
_CHI3_MEAN = 2 * math.sqrt(2 / math.pi)  # E|g| for g ~ N(0, I_3)


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


# --- hypothesis selection ---------------------------------------------------------------------------
def estimator_like_error(poses: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Poses (N, 90) with an estimator-like error of expected mean per-joint geodesic angle `degrees`
    (see ``error_<s>`` in the module docstring)."""
    n = len(poses)
    weight = np.tile(_JOINT_LEVEL, (n, 10)).reshape(n, 10, 3)  # (sample, hand x finger, joint)
    occluded = rng.random((n, 10)).argsort(1).argsort(1) < rng.integers(1, 4, size=(n, 1))
    weight[occluded] *= _OCCLUDED
    weight = weight.reshape(n, 30)
    weight /= weight.mean(1, keepdims=True)
    error = rng.normal(size=(n, 30, 3)) / _CHI3_MEAN * (weight * math.radians(degrees))[..., None]
    rotation = axis_angle_to_matrix(torch.from_numpy(np.asarray(poses, dtype=np.float64).reshape(n, 30, 3)))
    turned = rotation @ axis_angle_to_matrix(torch.from_numpy(error))
    return matrix_to_axis_angle(turned).numpy().reshape(n, 90)


def _swap_hands(poses: np.ndarray) -> np.ndarray:
    hands = np.asarray(poses).reshape(len(poses), 2, 15, 3)
    return np.concatenate([hands[:, 1] * _MIRROR, hands[:, 0] * _MIRROR], axis=1).reshape(len(poses), 90)


def _other_family(families: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) index of another pose per pose, of a different right-hand family where both are known."""
    if n < 2:
        raise ValueError("hypotheses need at least 2 poses (one is the 'other_family' hypothesis of another)")
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # uniform over the others
    if families is None:
        return other
    right = np.asarray(families)[:, 1]
    for _ in range(100):  # rejection: redraw where the families match (and are known)
        todo = np.flatnonzero((right >= 0) & (right[other] == right))
        if not todo.size:
            break
        other[todo] = (todo + rng.integers(1, n, size=todo.size)) % n
    return other  # a pose whose family every other pose shares keeps a same-family partner


def make_hypotheses(poses: np.ndarray, families: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Held-out poses (N, 90) [+ families (N, 2), -1 = unknown] -> (hypotheses (N, K, 90), kinds (K,)),
    index 0 the pose itself (`HYPOTHESIS_KINDS`, see the module docstring)."""
    poses = np.asarray(poses)
    made = []
    for kind in HYPOTHESIS_KINDS:
        if kind == "true":
            made.append(poses)
        elif kind.startswith("error_"):
            made.append(estimator_like_error(poses, float(kind.split("_")[1]), rng))
        elif kind == "joint_limits":
            made.append(corrupt(estimator_like_error(poses, 10.0, rng), "joint_limits", rng))
        elif kind == "swap":
            made.append(_swap_hands(poses))
        else:  # other_family
            made.append(poses[_other_family(families, len(poses), rng)])
    return np.stack(made, axis=1).astype(poses.dtype, copy=False), list(HYPOTHESIS_KINDS)


def hypothesis_errors(poses: np.ndarray, hypotheses: np.ndarray) -> np.ndarray:
    """(N, K): mean over the 30 joints of the geodesic angle (degrees) between each hypothesis (N, K, 90)
    and its pose (N, 90)."""
    n, k = hypotheses.shape[:2]
    truth = np.repeat(np.asarray(poses)[:, None], k, axis=1).reshape(n * k, 90)
    errors = per_joint_error_degrees(torch.from_numpy(truth), torch.from_numpy(np.asarray(hypotheses).reshape(n * k, 90)))
    return errors.mean(1).numpy().reshape(n, k)


def select_hypotheses(energies: np.ndarray, errors: np.ndarray, kinds: list[str] | tuple[str, ...] | None = None) -> dict[str, float]:
    """Scores of picking the lowest-energy hypothesis of each row (energies and errors (N, K), degrees).

    Ties share the pick equally (expected values, nothing sampled; a constant energy is the uniform
    pick; NaN counts as +inf). Returns ``top1`` (share of picks that are a lowest-error hypothesis),
    ``picked_deg`` (mean error of the pick), ``oracle_deg`` (mean of the lowest error) and, given
    `kinds` (K,), ``pick_<kind>`` (share of picks of each kind, repeated kinds summed).
    """
    energies = np.where(np.isnan(energies), np.inf, np.asarray(energies, dtype=np.float64))
    errors = np.asarray(errors, dtype=np.float64)
    chosen = (energies == energies.min(1, keepdims=True)).astype(np.float64)
    chosen /= chosen.sum(1, keepdims=True)  # (N, K) share of the pick per hypothesis
    best = errors == errors.min(1, keepdims=True)
    out = {"top1": float((chosen * best).sum(1).mean()), "picked_deg": float((chosen * errors).sum(1).mean()),
           "oracle_deg": float(errors.min(1).mean())}
    if kinds is not None:
        share = chosen.mean(0)
        for kind in dict.fromkeys(kinds):
            out[f"pick_{kind}"] = float(share[[k == kind for k in kinds]].sum())
    return out
