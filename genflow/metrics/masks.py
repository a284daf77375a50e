"""Overlap metrics of binary masks: IoU and Dice, per pair and best-of-K."""

from __future__ import annotations

import numpy as np

__all__ = ["mask_iou", "mask_dice", "best_of_k"]


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


def best_of_k(scores: np.ndarray) -> np.ndarray:
    """Best score over each scene's K samples: `(scenes, K)` -> `(scenes,)`."""
    return np.asarray(scores).max(axis=1)
