"""Quality of generated NAMO goal placements: overlap with the true mask (IoU, Dice), validity
(the generator's planner), mode coverage; of the raw masks, or of the poses the source's inference
would hand a robot (`proposal_metrics`)."""

from __future__ import annotations

import numpy as np

from genflow_recipes.namo.poses import accept_proposals, proposal_footprints
from genflow_recipes.namo.scenes import GRID, check_placement, scene_from_masks

__all__ = ["placement_metrics", "proposal_metrics", "modes_hit", "mask_iou", "mask_dice"]


def _flat(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    n = a.shape[0] if a.ndim > 2 else 1
    return a.reshape(n, -1), b.reshape(n, -1)


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Intersection over union per mask: `(N, H, W)` (or `(H, W)`) pairs -> `(N,)`. Two empty masks: 1."""
    p, t = _flat(pred, truth)
    inter, union = (p & t).sum(1), (p | t).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def mask_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice coefficient 2|A∩B| / (|A| + |B|) per mask: `(N, H, W)` -> `(N,)`. Two empty masks: 1."""
    p, t = _flat(pred, truth)
    inter, total = (p & t).sum(1), p.sum(1) + t.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def modes_hit(sample: np.ndarray, mode_map: np.ndarray) -> int:
    """Mode id (1-based) a placement mask `(S, S)` lands on, 0 for none.

    The mask's centroid, on the `mode_map` grid `(G, G)`, must fall on (or next to: one cell of
    tolerance for rounding) a cell where a valid placement of that mode is centred.
    """
    rows, cols = np.nonzero(sample)
    if rows.size == 0:
        return 0
    scale = GRID / sample.shape[-1]
    # the cell under the centroid, halves rounded up: the generator writes a mode at top-left + size // 2
    r = min(int(np.floor((rows.mean() + 0.5) * scale)), GRID - 1)
    c = min(int(np.floor((cols.mean() + 0.5) * scale)), GRID - 1)
    if mode_map[r, c]:
        return int(mode_map[r, c])
    window = mode_map[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
    labels = window[window > 0]
    return int(np.bincount(labels).argmax()) if labels.size else 0


def placement_metrics(context: np.ndarray, truth: np.ndarray, samples: np.ndarray, num_modes: np.ndarray,
                      mode_map: np.ndarray, *, counted: np.ndarray | None = None) -> dict[str, float]:
    """Scores K generated placements per scene.

    Args:
        context: `(N, 5, S, S)` scene masks: robot, goal, movable objects, static walls, target object.
        truth: `(N, S, S)` ground-truth placements (one of the valid ones).
        samples: `(N, K, S, S)` generated placements, binary.
        num_modes: `(N,)` valid modes per scene (<= 0: unknown, the scene is left out of coverage).
        mode_map: `(N, G, G)` mode id of the valid placement centred on each cell.
        counted: `(N, K)` bool, which samples are scored (default all). The others are never
            checked: per-sample means (iou, dice, validity, push_validity, collision_rate,
            goal_reachable_rate) are over the counted ones (NaN if none), and a scene whose samples
            all don't count has no valid sample (valid_scene_rate, coverage) and best_of_k_iou 0.

    Returns:
        iou, dice: mean over all samples against the ground truth; best_of_k_iou: mean over scenes
        of the best sample; validity: fraction of samples with no collision, a reachable robot goal
        and a plausible size; push_validity: valid and also one of the placements the generator's
        push search reaches (on a mode; scenes with known modes only) — teleporting the object to
        any free spot is valid but not push-valid; collision_rate, goal_reachable_rate;
        mode_coverage: mean over scenes of the fraction of modes hit by a valid sample;
        mode_coverage_multimodal: the same over the scenes with two or more modes only (where
        covering means more than finding one placement); valid_scene_rate: scenes with >= 1 valid sample.
    """
    n, k = samples.shape[:2]
    samples = samples.astype(bool)
    counted = np.ones((n, k), bool) if counted is None else np.asarray(counted, bool)
    truth_k = np.repeat(truth[:, None].astype(bool), k, axis=1)
    iou = mask_iou(samples.reshape(n * k, *samples.shape[2:]), truth_k.reshape(n * k, *truth.shape[1:])).reshape(n, k)
    dice = mask_dice(samples.reshape(n * k, *samples.shape[2:]), truth_k.reshape(n * k, *truth.shape[1:])).reshape(n, k)
    valid = np.zeros((n, k), bool)
    collides = np.zeros((n, k), bool)
    reachable = np.zeros((n, k), bool)
    coverage, coverage_multimodal, push_valid = [], [], []
    for i in range(n):
        scene = scene_from_masks(context[i])
        hit = set()
        for j in np.flatnonzero(counted[i]):
            check = check_placement(scene, samples[i, j])
            valid[i, j], collides[i, j], reachable[i, j] = check.valid, check.collides, check.goal_reachable
            if num_modes[i] > 0:
                mode = modes_hit(samples[i, j], mode_map[i]) if check.valid else 0
                push_valid.append(mode > 0)
                if mode:
                    hit.add(mode)
        if num_modes[i] > 0:
            coverage.append(len(hit) / int(num_modes[i]))
        if num_modes[i] > 1:
            coverage_multimodal.append(coverage[-1])

    def counted_mean(values: np.ndarray) -> float:
        return float(values[counted].mean()) if counted.any() else float("nan")

    return {
        "iou": counted_mean(iou),
        "dice": counted_mean(dice),
        "best_of_k_iou": float(np.where(counted, iou, 0.0).max(axis=1).mean()),
        "validity": counted_mean(valid),
        "push_validity": float(np.mean(push_valid)) if push_valid else float("nan"),
        "valid_scene_rate": float(valid.any(axis=1).mean()),
        "collision_rate": counted_mean(collides),
        "goal_reachable_rate": counted_mean(reachable),
        "mode_coverage": float(np.mean(coverage)) if coverage else float("nan"),
        "mode_coverage_multimodal": float(np.mean(coverage_multimodal)) if coverage_multimodal else float("nan"),
    }


def proposal_metrics(context: np.ndarray, truth: np.ndarray, samples: np.ndarray, num_modes: np.ndarray,
                     mode_map: np.ndarray) -> dict[str, float]:
    """`placement_metrics` of what the source's inference hands a robot: the target's own footprint at
    the pose of each sample it accepts (one non-empty 8-connected blob, `poses.accept_proposals`).

    Arguments as `placement_metrics`. Rejected samples are left out of the per-sample means; a scene
    with no accepted sample counts as one with no valid sample (valid_scene_rate, mode coverage) and
    scores 0 in best_of_k_iou; a footprint cut by the image border can fail the size check. Adds
    acceptance_rate: the fraction of all N x K samples accepted.
    """
    proposals = accept_proposals(samples)
    footprints = proposal_footprints(np.asarray(context)[:, 4], proposals)
    scores = placement_metrics(context, truth, footprints, num_modes, mode_map, counted=proposals.accepted)
    return {**scores, "acceptance_rate": float(proposals.accepted.mean())}
