"""Per-frame video prediction metrics in pixel space, and the trivial predictors to compare against.

Frames are float arrays in [0, 1] of shape ``(N, T, H, W)``; every metric returns ``(N, T)`` values,
one per frame, so callers can average per horizon (over N) and over horizons.

- MSE is summed over a frame's pixels (OpenSTL's convention: "MSE per frame").
- PSNR is ``10 log10(1 / mean squared error)`` per frame; identical frames would give infinity, so the
  error is floored at 1e-10 (PSNR capped at 100 dB).
- SSIM is scikit-image's ``structural_similarity`` (as OpenSTL) with ``data_range=1``, 7 x 7 windows.
"""

from __future__ import annotations

import numpy as np

from genflow.extras import import_optional

__all__ = [
    "PSNR_CAP_DB",
    "all_black_prediction",
    "shifted_last_frame_prediction",
    "copy_last_prediction",
    "frame_mse",
    "frame_psnr",
    "frame_ssim",
    "upsample_frames",
]

PSNR_CAP_DB = 100.0


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
