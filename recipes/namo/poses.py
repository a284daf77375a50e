"""Goal poses (x, y, θ) from generated placement masks, as the source system hands them to a robot.

The source (sage_learning) thresholds each sample, drops it unless it is one blob (OpenCV's
8-connected components: empty or two or more -> dropped), fits a minimum-area rectangle to what is
left and returns the rectangle's centre and angle. Here the same without OpenCV: scipy's 8-connected
labelling, a monotone-chain convex hull and rotating calipers over the hull's edges.

Pose convention (every function of this module):

- ``x`` = column, ``y`` = row, in pixels of the ``S x S`` mask, pixel ``(row r, column c)`` sitting at
  ``(x, y) = (c, r)`` (pixel centres, OpenCV's contour coordinates). ``(x, y)`` is the centre of the
  minimum-area rectangle around the pixel centres, not the pixel centroid. In [0, 1] units with 0 at
  the image's left / top edge: ``x_unit = (x + 0.5) / S``, ``y_unit = (y + 0.5) / S``.
- ``θ`` in radians: the angle of the rectangle's long side to the +x (column) axis, measured towards
  +y (rows grow downwards, so a positive θ looks clockwise on the picture), folded into [-π/2, π/2)
  since a rectangle is the same turned by π: a horizontal bar has θ = 0, a vertical one θ = -π/2.
- A square (sides equal within 1e-9) has no long side: θ is the direction of the side nearest the
  x axis, in [-π/4, π/4) (an axis-aligned square: 0). A single pixel: size (0, 0), θ = 0; a straight
  line of pixels: size (length, 0), θ along it.
- Of several rectangles of the same least area (common on a few pixels), the one nearest axis-aligned.
- The rectangle spans pixel centres, so its size is one pixel less than the footprint per side
  (a 2 x 6 bar: 5 x 1), as OpenCV's on a contour.

How it differs from the source: ``cv2.minAreaRect`` gives degrees, for the side it calls width (whose
range has changed across OpenCV versions), and the source adds 90° when width < height: its θ is the
long side's angle in degrees in the same image frame (x right, y down), up to a multiple of 180°.
Ours is that angle in radians folded into [-π/2, π/2). benchmarks/parity/namo_poses_opencv.py holds
both against each other (figures on docs/recipes/namo.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


__all__ = ["POSE_CONVENTION", "Rectangle", "ProposalSet", "ScenePoses", "convex_hull", "min_area_rectangle",
           "mask_pose", "accept_proposals", "footprint_at_pose", "proposal_footprints", "propose_goal_poses"]

POSE_CONVENTION = ("(x, y, theta): x = column, y = row in pixels (pixel centres) of the S x S mask, centre of the "
                   "minimum-area rectangle; theta in radians = angle of its long side to +x towards +y (rows down), "
                   "in [-pi/2, pi/2)")

_TIE = 1e-9  # relative tolerance: equal areas / equal sides


class Rectangle(NamedTuple):
    centre: np.ndarray  # (2,) x, y
    size: tuple[float, float]  # (along θ, across): size[0] >= size[1]
    angle: float  # θ of the long side, radians in [-π/2, π/2)


def _fold(theta: float) -> float:
    """An undirected angle into [-π/2, π/2); π/2 itself (within 1e-9) becomes -π/2."""
    theta = (theta + math.pi / 2) % math.pi - math.pi / 2
    return theta - math.pi if theta >= math.pi / 2 - 1e-9 else theta


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull `(H, 2)` of points `(M, 2)` (Andrew's monotone chain), no collinear points, in order."""
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts

    def half(sequence: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in sequence:
            while len(chain) >= 2:
                (ox, oy), (ax, ay) = chain[-2], chain[-1]
                if (ax - ox) * (p[1] - oy) - (ay - oy) * (p[0] - ox) > 0:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def min_area_rectangle(points: np.ndarray) -> Rectangle:
    """The smallest-area rectangle around points `(M, 2)` (x, y): its centre, size and long-side angle.

    One side of the best rectangle lies along a hull edge (rotating calipers), so every hull edge is
    tried; of equal areas the one nearest axis-aligned wins (then the first in hull order).
    """
    hull = convex_hull(points)
    if len(hull) == 0:
        raise ValueError("min_area_rectangle: no points")
    if len(hull) == 1:
        return Rectangle(hull[0].copy(), (0.0, 0.0), 0.0)
    edges = np.roll(hull, -1, axis=0) - hull
    u = edges / np.linalg.norm(edges, axis=1, keepdims=True)  # (E, 2) along each edge
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)  # (E, 2) across it
    a, b = u @ hull.T, v @ hull.T  # (E, H) projections
    along, across = a.max(1) - a.min(1), b.max(1) - b.min(1)
    area = along * across
    # equal areas (frequent on few pixels): the rectangle nearest axis-aligned, then the first edge in hull order
    ties = np.flatnonzero(area <= area.min() + _TIE * max(area.min(), 1.0))
    i = int(ties[np.argmin(np.round(np.abs(2 * u[ties, 0] * u[ties, 1]), 9))])  # |sin 2φ| of the edge's angle φ
    centre = u[i] * (a[i].max() + a[i].min()) / 2 + v[i] * (b[i].max() + b[i].min()) / 2
    angles = [_fold(math.atan2(d[1], d[0])) for d in (u[i], v[i])]
    if abs(along[i] - across[i]) <= _TIE * max(along[i], 1.0):  # a square: the side nearest the x axis
        angle = angles[0] if angles[0] < math.pi / 4 - 1e-9 else angles[1]
    else:
        angle = angles[0] if along[i] > across[i] else angles[1]
    return Rectangle(centre, (float(max(along[i], across[i])), float(min(along[i], across[i]))), angle)


def _component_counts(masks: np.ndarray) -> np.ndarray:
    """8-connected components of each mask `(B, S, S)` -> `(B,)` (0: empty)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within a mask, never across masks
    labels, count = ndimage.label(masks, structure=structure)
    flat = labels.reshape(len(masks), -1)
    mask_index, pixel = np.nonzero(flat)
    mask_of_label = np.zeros(count + 1, np.int64)
    mask_of_label[flat[mask_index, pixel]] = mask_index  # every pixel of a label lies in one mask
    return np.bincount(mask_of_label[1:], minlength=len(masks))


def _pixel_rectangle(mask: np.ndarray) -> Rectangle:
    """Minimum-area rectangle of a non-empty mask's pixel centres (the hull needs only each row's ends)."""
    rows = np.flatnonzero(mask.any(1))
    first = mask[rows].argmax(1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
    return min_area_rectangle(np.concatenate([np.stack([first, rows], 1), np.stack([last, rows], 1)]))


@dataclass
class ScenePoses:
    poses: np.ndarray  # (M, 3) accepted (x, y, θ)
    indices: np.ndarray  # (M,) which of the scene's K samples each came from
    acceptance_rate: float  # M / K


@dataclass
class ProposalSet:
    """Which of K samples per scene the source's inference keeps, and their poses."""

    accepted: np.ndarray  # (N, K) bool: non-empty and exactly one 8-connected component
    poses: np.ndarray  # (N, K, 3) float64 (x, y, θ), NaN where rejected
    components: np.ndarray  # (N, K) int 8-connected components (0: empty), why a sample was dropped

    @property
    def acceptance_rate(self) -> np.ndarray:
        """`(N,)` fraction of each scene's K samples accepted."""
        return self.accepted.mean(axis=1)

    def per_scene(self) -> list[ScenePoses]:
        """The accepted poses of each scene, with which samples they came from."""
        return [ScenePoses(poses=self.poses[i][ok], indices=np.flatnonzero(ok), acceptance_rate=float(ok.mean()))
                for i, ok in enumerate(self.accepted)]


def accept_proposals(samples: np.ndarray) -> ProposalSet:
    """The source's inference on binary samples `(N, K, S, S)`: drop a sample that is empty or more than
    one 8-connected blob, fit a pose (module docstring) to each one kept."""
    samples = np.asarray(samples) > 0.5  # the source's threshold; binary samples pass unchanged
    n, k = samples.shape[:2]
    flat = samples.reshape(n * k, *samples.shape[2:])
    components = _component_counts(flat)
    poses = np.full((n * k, 3), np.nan)
    for index in np.flatnonzero(components == 1):
        rect = _pixel_rectangle(flat[index])
        poses[index] = (*rect.centre, rect.angle)
    return ProposalSet(accepted=(components == 1).reshape(n, k), poses=poses.reshape(n, k, 3),
                       components=components.reshape(n, k))


def mask_pose(mask: np.ndarray) -> np.ndarray | None:
    """Pose `(3,)` (x, y, θ) of one mask `(S, S)`; None where the source drops it (empty, or not one blob)."""
    proposals = accept_proposals(np.asarray(mask)[None, None])
    return proposals.poses[0, 0] if proposals.accepted[0, 0] else None


def _footprints(target_mask: np.ndarray, poses: np.ndarray, target_pose: np.ndarray) -> np.ndarray:
    """`(M, S, S)` the target moved to each pose `(M, 3)`: every output pixel centre mapped back into the target."""
    size_r, size_c = target_mask.shape
    ys, xs = np.mgrid[0:size_r, 0:size_c].astype(np.float64)
    turn = poses[:, 2] - target_pose[2]
    cos, sin = np.cos(turn)[:, None, None], np.sin(turn)[:, None, None]
    dx, dy = xs - poses[:, 0, None, None], ys - poses[:, 1, None, None]
    # the inverse rotation; rounding to 1e-6 first keeps exact half-pixels (lost to cos(π/2) ~ 6e-17) exact,
    # and floor(. + 0.5) breaks those ties the same way everywhere, so a pure shift neither drops nor doubles pixels
    src_x = np.floor(np.round(cos * dx + sin * dy + target_pose[0], 6) + 0.5).astype(np.int64)
    src_y = np.floor(np.round(-sin * dx + cos * dy + target_pose[1], 6) + 0.5).astype(np.int64)
    inside = (src_x >= 0) & (src_x < size_c) & (src_y >= 0) & (src_y < size_r)
    target = np.asarray(target_mask) > 0
    return inside & target[src_y.clip(0, size_r - 1), src_x.clip(0, size_c - 1)]


def footprint_at_pose(target_mask: np.ndarray, pose: np.ndarray, *,
                      target_pose: np.ndarray | None = None) -> np.ndarray:
    """The target object's own footprint `(S, S)` bool placed at `pose` (x, y, θ).

    The target mask `(S, S)` (context channel 4) is turned by θ_pose - θ_target about its pose's centre
    and moved so that centre lands on the pose's; each output pixel takes the target pixel nearest to
    where its centre maps back. Footprint pixels that would fall outside the image are cut (the mask
    loses them); turned by other than a multiple of 90°, the drawn area can differ from the target's by
    a few pixels (nearest-neighbour sampling). `target_pose` defaults to :func:`mask_pose` of the
    target (a ValueError where it has none).
    """
    if target_pose is None:
        target_pose = mask_pose(target_mask)
        if target_pose is None:
            raise ValueError("footprint_at_pose: the target mask is empty or not one 8-connected blob")
    return _footprints(target_mask, np.asarray(pose, np.float64)[None], np.asarray(target_pose, np.float64))[0]


def proposal_footprints(targets: np.ndarray, proposals: ProposalSet) -> np.ndarray:
    """`(N, K, S, S)` bool: each scene's target `(N, S, S)` at each accepted pose; empty where a sample was
    rejected, or where the target itself has no pose (empty or fragmented)."""
    n, k = proposals.accepted.shape
    out = np.zeros((n, k, *targets.shape[1:]), bool)
    for i in range(n):
        kept = np.flatnonzero(proposals.accepted[i])
        target_pose = mask_pose(targets[i]) if kept.size else None
        if target_pose is not None:
            out[i, kept] = _footprints(targets[i], proposals.poses[i, kept], target_pose)
    return out


def propose_goal_poses(recipe: Any, model: Any, context: Any, *, samples_per_scene: int = 32, solver: str | None = None,
                       steps: int | None = None, seed: int = 0) -> list[ScenePoses]:
    """Goal poses for scenes `(N, 5, S, S)` (numpy or torch): K samples each from `recipe.generate`, then
    :func:`accept_proposals`; per scene the accepted poses `(M, 3)`, their sample indices and M / K."""
    import torch

    context = context if isinstance(context, torch.Tensor) else torch.from_numpy(np.asarray(context))
    samples, _ = recipe.generate(model, context, samples_per_scene=samples_per_scene, solver=solver, steps=steps,
                                 seed=seed)
    return accept_proposals(samples).per_scene()
