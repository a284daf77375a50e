"""Per-frame video prediction metrics in pixel space, and the trivial predictors to compare against.

Frames are float arrays in [0, 1] of shape ``(N, T, H, W)``; every metric returns ``(N, T)`` values,
one per frame, so callers can average per horizon (over N) and over horizons.

Two published sets of definitions are provided, because papers report both:

- OpenSTL's (``frame_*``):

  - MSE is summed over a frame's pixels ("MSE per frame").
  - PSNR is ``10 log10(1 / mean squared error)`` per frame; identical frames would give infinity, so the
    error is floored at 1e-10 (PSNR capped at 100 dB).
  - SSIM is scikit-image's ``structural_similarity`` with ``data_range=1``, 7 x 7 windows.

- copilot4D's (``pixel_*`` and ``global_ssim``, from its Moving MNIST validation script):

  - MSE is the mean over a frame's pixels, i.e. OpenSTL's divided by ``H * W``.
  - PSNR is ``20 log10(1 / sqrt(mean squared error))``, which is :func:`frame_psnr` (capped the same way).
  - SSIM uses one window covering the whole frame (global means, variances and covariance).

Ink metrics count "inked" pixels (value > 0.5, i.e. token level > 7 for 16 levels dequantised as
``level / 15``) and give recall and precision of the digits' strokes per horizon, pooled over sequences.
"""
from __future__ import annotations

import numpy as np

from genflow.extras import import_optional

__all__ = [
    "INK_THRESHOLD",
    "PSNR_CAP_DB",
    "all_black_prediction",
    "shifted_last_frame_prediction",
    "copy_last_prediction",
    "frame_mse",
    "frame_psnr",
    "frame_ssim",
    "global_ssim",
    "ink_counts",
    "ink_recall_precision",
    "pixel_mse",
    "upsample_frames",
]

PSNR_CAP_DB = 100.0
INK_THRESHOLD = 0.5  # strictly above: for levels / 15 this is exactly level > 7


def _check(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} must have the same shape")


def frame_mse(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Squared error summed over each frame's pixels, ``(N, T)``."""
    _check(prediction, target)
    return ((prediction.astype(np.float64) - target) ** 2).sum(axis=(-2, -1))


def frame_psnr(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame (data range 1), capped at :data:`PSNR_CAP_DB`, ``(N, T)``."""
    _check(prediction, target)
    mse = ((prediction.astype(np.float64) - target) ** 2).mean(axis=(-2, -1))
    return 10 * np.log10(1.0 / np.maximum(mse, 10 ** (-PSNR_CAP_DB / 10)))


def frame_ssim(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Structural similarity of each frame (scikit-image, data range 1), ``(N, T)``."""
    structural_similarity = import_optional("skimage.metrics", extra="video", package="scikit-image",
                                            needed_by="SSIM (mmnist-wm video metrics)").structural_similarity

    _check(prediction, target)
    pred = prediction.reshape(-1, *prediction.shape[-2:]).astype(np.float64)
    true = target.reshape(-1, *target.shape[-2:]).astype(np.float64)
    values = [structural_similarity(p, t, data_range=1.0) for p, t in zip(pred, true)]
    return np.asarray(values).reshape(prediction.shape[:-2])


def pixel_mse(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Squared error averaged over each frame's pixels (copilot4D), ``(N, T)``: :func:`frame_mse` / ``(H * W)``."""
    return frame_mse(prediction, target) / (prediction.shape[-2] * prediction.shape[-1])


def global_ssim(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Structural similarity over one window covering each whole frame (copilot4D), ``(N, T)``.

    Means, population variances (ddof 0) and covariance are taken over all of a frame's pixels, with
    ``c1 = 0.01**2`` and ``c2 = 0.03**2`` (data range 1). Unlike :func:`frame_ssim`, the black background
    earns no credit: an all-black prediction of a Moving MNIST frame scores near 0 here, but about 0.5 or
    more with 7 x 7 windows, because every window of black background matches the target exactly.
    """
    _check(prediction, target)
    c1, c2 = 0.01**2, 0.03**2
    pred = prediction.astype(np.float64)
    true = target.astype(np.float64)
    mu_p, mu_t = pred.mean(axis=(-2, -1)), true.mean(axis=(-2, -1))
    var_p, var_t = pred.var(axis=(-2, -1)), true.var(axis=(-2, -1))
    cov = ((pred - mu_p[..., None, None]) * (true - mu_t[..., None, None])).mean(axis=(-2, -1))
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def ink_counts(prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Counts of inked pixels (value > :data:`INK_THRESHOLD`) per frame.

    Returns:
        ``{"hits", "truth", "predicted"}``, each an ``(N, T)`` int array: pixels inked in both frames,
        inked in the target, inked in the prediction.
    """
    _check(prediction, target)
    pred_ink, true_ink = prediction > INK_THRESHOLD, target > INK_THRESHOLD
    return {
        "hits": (pred_ink & true_ink).sum(axis=(-2, -1)),
        "truth": true_ink.sum(axis=(-2, -1)),
        "predicted": pred_ink.sum(axis=(-2, -1)),
    }


def ink_recall_precision(counts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ink recall and precision per horizon, pooled over sequences.

    ``recall[h] = sum_n hits / sum_n truth`` and ``precision[h] = sum_n hits / sum_n predicted`` (pooled
    counts, not a mean of per-sequence ratios). A zero denominator gives NaN: an all-black prediction
    inks nothing, so its precision is undefined (and its recall 0).

    Args:
        counts: The ``(N, T)`` arrays from :func:`ink_counts`.

    Returns:
        ``(recall, precision)``, each a float ``(T,)`` array.
    """
    hits, truth, predicted = (counts[key].sum(axis=0).astype(np.float64) for key in ("hits", "truth", "predicted"))

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        return np.divide(numerator, denominator, out=np.full_like(numerator, np.nan), where=denominator > 0)

    return ratio(hits, truth), ratio(hits, predicted)


def upsample_frames(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of ``(..., H, W)`` by an integer factor (pixel replication)."""
    return frames.repeat(factor, axis=-2).repeat(factor, axis=-1)


def copy_last_prediction(past: np.ndarray, num_future: int) -> np.ndarray:
    """The last past frame repeated: ``past`` ``(N, P, H, W)`` -> ``(N, F, H, W)``."""
    return np.repeat(past[:, -1:], num_future, axis=1)


def all_black_prediction(past: np.ndarray, num_future: int) -> np.ndarray:
    """Black frames (the background): ``(N, F, H, W)`` zeros."""
    return np.zeros((past.shape[0], num_future, *past.shape[2:]), dtype=past.dtype)


def shifted_last_frame_prediction(past: np.ndarray, future_actions: np.ndarray, pixels_per_unit: float) -> np.ndarray:
    """The last past frame shifted by cumulative per-frame displacements (actions).

    A constant-velocity predictor passes the last observed action at every step; passing the true
    future actions moves the frame exactly as the tracked digit moves.

    Args:
        past: ``(N, P, H, W)`` frames.
        future_actions: ``(N, F, 2)`` ``[dx, dy]`` of each future frame, in normalised units.
        pixels_per_unit: Pixels per action unit (``frame_size / 2`` for the source's normalisation).

    Returns:
        ``(N, F, H, W)``: each future frame is the last frame translated by the rounded cumulative
        displacement, with black where the shift uncovers the canvas.
    """
    last = past[:, -1]
    shifts = np.rint(np.cumsum(future_actions, axis=1) * pixels_per_unit).astype(int)  # (N, F, 2)
    out = np.zeros((past.shape[0], future_actions.shape[1], *last.shape[1:]), dtype=past.dtype)
    height, width = last.shape[1:]
    for n in range(past.shape[0]):
        for f in range(future_actions.shape[1]):
            dx, dy = shifts[n, f]
            src_rows = slice(max(0, -dy), min(height, height - dy))
            dst_rows = slice(max(0, dy), min(height, height + dy))
            src_cols = slice(max(0, -dx), min(width, width - dx))
            dst_cols = slice(max(0, dx), min(width, width + dx))
            if src_rows.start < src_rows.stop and src_cols.start < src_cols.stop:
                out[n, f, dst_rows, dst_cols] = last[n, src_rows, src_cols]
    return out
