"""Tests for genflow_recipes.mmnist_wm.metrics: per-frame MSE / PSNR / SSIM (OpenSTL and copilot4D definitions),
ink recall / precision, and the trivial baseline predictors."""

import numpy as np
import pytest

from genflow_recipes.mmnist_wm.metrics import (
    PSNR_CAP_DB,
    all_black_prediction,
    shifted_last_frame_prediction,
    copy_last_prediction,
    frame_mse,
    frame_psnr,
    frame_ssim,
    global_ssim,
    ink_counts,
    ink_recall_precision,
    pixel_mse,
    upsample_frames,
)


def smooth_frames(n: int = 2, t: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """Structured frames in [0, 1]: random blobs (so shifts change SSIM)."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, t, size, size))
    for index in np.ndindex(n, t):
        for _ in range(3):
            r, c = rng.integers(2, size - 10, size=2)
            frames[index][r : r + 8, c : c + 8] = rng.uniform(0.5, 1.0)
    return frames


def test_identical_frames_give_zero_mse_capped_psnr_and_unit_ssim():
    frames = smooth_frames()
    assert frame_mse(frames, frames).shape == (2, 3)
    np.testing.assert_array_equal(frame_mse(frames, frames), 0.0)
    np.testing.assert_allclose(frame_psnr(frames, frames), PSNR_CAP_DB)
    assert PSNR_CAP_DB == 100.0
    np.testing.assert_allclose(frame_ssim(frames, frames), 1.0, atol=1e-9)


def test_mse_against_black_is_the_sum_of_squares_per_frame():
    frames = smooth_frames()
    np.testing.assert_allclose(frame_mse(frames, np.zeros_like(frames)), (frames**2).sum(axis=(-2, -1)))


@pytest.mark.parametrize("error", [0.5, 0.1, 0.01])
def test_psnr_of_a_uniform_error(error):
    target = smooth_frames() * 0.5
    np.testing.assert_allclose(frame_psnr(target + error, target), 10 * np.log10(1 / error**2), rtol=1e-9)


def test_ssim_is_symmetric_and_lower_for_a_shifted_frame():
    frames = smooth_frames()
    shifted = np.roll(frames, 3, axis=-1)
    forward, backward = frame_ssim(shifted, frames), frame_ssim(frames, shifted)
    np.testing.assert_allclose(forward, backward, atol=1e-9)
    assert (forward < 0.95).all() and (forward >= -1).all()


def test_metrics_reject_mismatched_shapes():
    for metric in (frame_mse, frame_psnr, frame_ssim, pixel_mse, global_ssim, ink_counts):
        with pytest.raises(ValueError, match="same shape"):
            metric(np.zeros((1, 2, 8, 8)), np.zeros((1, 3, 8, 8)))


def test_pixel_mse_is_frame_mse_divided_by_the_pixel_count():
    rng = np.random.default_rng(0)
    prediction, target = rng.random((2, 3, 4, 5)), rng.random((2, 3, 4, 5))
    assert pixel_mse(prediction, target).shape == (2, 3)
    np.testing.assert_allclose(pixel_mse(prediction, target), frame_mse(prediction, target) / 20, rtol=1e-12)


def test_psnr_is_copilot4ds_ten_log10_of_one_over_pixel_mse_capped():
    frames = smooth_frames()
    noisy = np.clip(frames + np.random.default_rng(1).normal(0, 0.1, frames.shape), 0, 1)
    np.testing.assert_allclose(frame_psnr(noisy, frames), 10 * np.log10(1 / pixel_mse(noisy, frames)), rtol=1e-12)
    np.testing.assert_allclose(frame_psnr(frames, frames), PSNR_CAP_DB)


def test_global_ssim_of_identical_frames_is_one_and_of_the_negative_is_below_zero():
    frames = smooth_frames()
    np.testing.assert_allclose(global_ssim(frames, frames), 1.0, atol=1e-12)
    assert global_ssim(1 - frames, frames).shape == (2, 3)
    assert (global_ssim(1 - frames, frames) < 0).all()


def test_global_ssim_matches_a_hand_computed_2x2_frame():
    """mu = 1/4, 1/2; population variances 3/16, 1/4; covariance mean(p t) - mu_p mu_t = 1/4 - 1/8 = 1/8."""
    prediction = np.array([[[[0.0, 0.0], [0.0, 1.0]]]])
    target = np.array([[[[0.0, 0.0], [1.0, 1.0]]]])
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * 0.25 * 0.5 + c1) * (2 * 0.125 + c2) / ((0.25**2 + 0.5**2 + c1) * (3 / 16 + 0.25 + c2))
    np.testing.assert_allclose(global_ssim(prediction, target), [[expected]], rtol=1e-12)
    np.testing.assert_allclose(global_ssim(target, prediction), [[expected]], rtol=1e-12)


def test_all_black_scores_near_zero_global_ssim_but_high_windowed_ssim():
    """Sparse strokes on black: every 7 x 7 window of background matches, the one global window does not."""
    target = np.zeros((1, 1, 32, 32))
    target[0, 0, 8:24, 10:12] = 1.0
    target[0, 0, 8:10, 10:20] = 1.0
    black = np.zeros_like(target)
    assert global_ssim(black, target)[0, 0] < 0.01
    assert frame_ssim(black, target)[0, 0] > 0.5


def test_ink_counts_threshold_strictly_above_one_half():
    """Sixteen levels / 15: inked exactly when level > 7; 0.5 itself is not inked."""
    levels = np.arange(16).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(ink_counts(levels / 15, levels / 15)["truth"], [[8]])
    half = np.full((1, 1, 1, 1), 0.5)
    assert ink_counts(half, half)["truth"][0, 0] == 0


def test_ink_counts_on_a_hand_made_example():
    prediction = np.array([[[[0.9, 0.9, 0.1, 0.6]], [[0.0, 0.0, 0.0, 0.0]]]])  # (1, 2, 1, 4)
    target = np.array([[[[1.0, 0.2, 0.8, 0.7]], [[0.0, 1.0, 0.0, 0.0]]]])
    counts = ink_counts(prediction, target)
    assert set(counts) == {"hits", "truth", "predicted"}
    assert counts["hits"].dtype.kind == "i"
    np.testing.assert_array_equal(counts["hits"], [[2, 0]])
    np.testing.assert_array_equal(counts["truth"], [[3, 1]])
    np.testing.assert_array_equal(counts["predicted"], [[3, 0]])


def test_ink_recall_and_precision_pool_counts_over_sequences():
    """Sequence 0 recalls 1 of 1 pixels, sequence 1 recalls 0 of 3: pooled 1/4, not the mean of ratios 1/2."""
    target = np.array([[[[1.0, 0.0, 0.0, 0.0]]], [[[1.0, 1.0, 1.0, 0.0]]]])  # (2, 1, 1, 4)
    prediction = np.array([[[[1.0, 1.0, 1.0, 1.0]]], [[[0.0, 0.0, 0.0, 1.0]]]])
    recall, precision = ink_recall_precision(ink_counts(prediction, target))
    assert recall.shape == precision.shape == (1,)
    np.testing.assert_allclose(recall, [1 / 4])
    np.testing.assert_allclose(precision, [1 / 5])  # per-sequence ratios 1/4 and 0/1 would average to 1/8


def test_ink_precision_of_an_all_black_prediction_is_nan():
    target = smooth_frames(n=2, t=3, size=16)
    recall, precision = ink_recall_precision(ink_counts(np.zeros_like(target), target))
    assert recall.shape == precision.shape == (3,)
    np.testing.assert_array_equal(recall, 0.0)
    assert np.isnan(precision).all()


def test_constant_velocity_shifts_one_pixel_right_per_frame_with_black_fill():
    """Action dx = 1/16 in 32 px frames (16 px per unit) moves the last frame 1 px right per future frame."""
    past = smooth_frames(n=1, t=2, size=32)
    actions = np.tile([1 / 16, 0.0], (1, 3, 1))
    out = shifted_last_frame_prediction(past, actions, pixels_per_unit=16)
    last = past[0, -1]
    assert out.shape == (1, 3, 32, 32) and out.dtype == past.dtype
    for f in range(3):
        shift = f + 1
        np.testing.assert_array_equal(out[0, f, :, shift:], last[:, :-shift])
        np.testing.assert_array_equal(out[0, f, :, :shift], 0.0)


def test_constant_velocity_shifts_up_and_left_for_negative_actions():
    past = smooth_frames(n=1, t=1, size=32)
    out = shifted_last_frame_prediction(past, np.array([[[-2 / 16, -1 / 16]]]), pixels_per_unit=16)
    np.testing.assert_array_equal(out[0, 0, :-1, :-2], past[0, -1, 1:, 2:])
    assert not out[0, 0, -1:, :].any() and not out[0, 0, :, -2:].any()


def test_constant_velocity_beyond_the_canvas_is_black():
    past = smooth_frames(n=1, t=1, size=32)
    out = shifted_last_frame_prediction(past, np.array([[[3.0, 0.0]]]), pixels_per_unit=16)  # 48 px
    assert not out.any()


def test_copy_last_repeats_the_last_past_frame():
    past = smooth_frames(n=2, t=3, size=16)
    out = copy_last_prediction(past, 5)
    assert out.shape == (2, 5, 16, 16)
    np.testing.assert_array_equal(out, np.broadcast_to(past[:, -1:], out.shape))


def test_all_black_is_zeros_of_the_future_shape():
    past = smooth_frames(n=2, t=3, size=16).astype(np.float32)
    out = all_black_prediction(past, 4)
    assert out.shape == (2, 4, 16, 16) and out.dtype == np.float32 and not out.any()


def test_upsample_replicates_pixels():
    frames = np.arange(4.0).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(upsample_frames(frames, 2)[0, 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
