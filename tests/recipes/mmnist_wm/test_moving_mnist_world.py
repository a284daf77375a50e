"""Tests for genflow_recipes.mmnist_wm.world: bouncing-digit physics, rendering, preprocessing, ego actions,
template tracking and the two dataset writers (generated from MNIST, imported from a .npy)."""

import re
from typing import get_args, get_type_hints

import numpy as np
import pytest
import torch
from scipy import ndimage

from genflow.config import load_options
from genflow.data.mnist import MnistArrays, save_mnist_npz
from genflow.data.registry import DataJob, get_data_command
from genflow_recipes.mmnist_wm.data_commands import MovingMnistImportOptions, MovingMnistOptions
from genflow_recipes.mmnist_wm.world import (
    DIGIT_SIZE,
    NUM_LEVELS,
    PREPROCESSING,
    bouncing_trajectories,
    dequantise,
    downsample_frames,
    ego_actions,
    frames_to_tokens,
    import_moving_mnist,
    make_moving_mnist,
    quantise,
    render_sequences,
    track_ego_actions,
)
from genflow.data.shards import load_split, read_manifest
from genflow.errors import ConfigError, DataSourceError

CANVAS, FRAME = 64, 32


def square(side: int = 20, value: int = 255) -> np.ndarray:
    """A filled square centred in a 28 x 28 image."""
    image = np.zeros((DIGIT_SIZE, DIGIT_SIZE), np.uint8)
    start = (DIGIT_SIZE - side) // 2
    image[start : start + side, start : start + side] = value
    return image


def ring(outer: int = 24, inner: int = 12, value: int = 200) -> np.ndarray:
    """A hollow square ring centred in a 28 x 28 image (less ink than :func:`square` by default)."""
    image = square(outer, value)
    start = (DIGIT_SIZE - inner) // 2
    image[start : start + inner, start : start + inner] = 0
    return image


def two_digit_videos(seed: int, num_sequences: int, num_frames: int):
    """Bouncing ring (digit 0) and filled square (digit 1, the one with more ink), rendered at 64 x 64."""
    _, offsets = bouncing_trajectories(np.random.default_rng(seed), num_sequences, num_frames, 2, CANVAS)
    digits = np.broadcast_to(np.stack([ring(), square()]), (num_sequences, 2, DIGIT_SIZE, DIGIT_SIZE)).copy()
    return offsets, digits, render_sequences(digits, offsets, CANVAS)


def blob_count(frame: np.ndarray) -> int:
    return ndimage.label(frame > 0, structure=np.ones((3, 3), bool))[1]


@pytest.fixture(scope="module")
def trajectories():
    """``positions, offsets`` of 64 sequences x 3 digits x 30 frames."""
    return bouncing_trajectories(np.random.default_rng(0), 64, 30, 3, CANVAS)


# --- generator physics ----------------------------------------------------------------------------
@pytest.mark.parametrize("canvas", [64, 48, 28])
def test_offsets_keep_every_digit_inside_the_canvas(canvas):
    positions, offsets = bouncing_trajectories(np.random.default_rng(1), 32, 25, 2, canvas)
    assert offsets.shape == positions.shape == (32, 2, 25, 2) and offsets.dtype == np.int32
    assert offsets.min() >= 0 and offsets.max() <= canvas - DIGIT_SIZE
    np.testing.assert_array_equal(offsets, ((canvas - DIGIT_SIZE) * positions).astype(np.int32))


def test_rendered_digit_is_never_clipped_by_the_canvas(trajectories):
    """A single digit keeps all its ink in every frame (nothing drawn outside the 64 x 64 canvas)."""
    _, offsets = trajectories
    digit = square(28)
    frames = render_sequences(np.broadcast_to(digit, (64, 1, 28, 28)).copy(), offsets[:, :1])
    assert frames.shape == (64, 30, CANVAS, CANVAS) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames.reshape(64, 30, -1).sum(-1, dtype=np.int64), int(digit.sum(dtype=np.int64)))


def test_render_combines_overlapping_digits_with_max():
    offsets = np.zeros((1, 2, 1, 2), np.int32)  # both digits at the same place
    digits = np.stack([square(28, 100), square(10, 250)])[None]
    frame = render_sequences(digits, offsets)[0, 0, :28, :28]
    np.testing.assert_array_equal(frame, np.maximum(digits[0, 0], digits[0, 1]))


def test_positions_stay_in_unit_square(trajectories):
    positions, _ = trajectories
    assert positions.min() >= 0.0 and positions.max() <= 1.0


def test_bounce_flips_the_velocity_component(trajectories):
    """A coordinate clamped at 0 (1) was decreasing (increasing) before and increases (decreases) after."""
    positions, _ = trajectories
    bounces = 0
    for n, d, t, c in zip(*np.nonzero((positions[:, :, 1:-1] == 0.0) | (positions[:, :, 1:-1] == 1.0))):
        t = t + 1
        before = positions[n, d, t, c] - positions[n, d, t - 1, c]
        after = positions[n, d, t + 1, c] - positions[n, d, t, c]
        wall = 1.0 if positions[n, d, t, c] == 0.0 else -1.0  # direction pointing back into the square
        assert before * wall < 0 < after * wall, (n, d, t, c, before, after)
        bounces += 1
    assert bounces > 50  # the check above really ran


def test_step_length_is_one_tenth_without_bounce(trajectories):
    positions, _ = trajectories
    steps = np.linalg.norm(positions[:, :, 1:] - positions[:, :, :-1], axis=-1)
    clamped = ((positions == 0.0) | (positions == 1.0)).any(-1)[:, :, 1:]
    assert (~clamped).sum() > 1000
    np.testing.assert_allclose(steps[~clamped], 0.1, rtol=0, atol=1e-12)
    assert (steps[clamped] <= 0.1 + 1e-12).all()  # clamping only shortens a step


# --- preprocessing --------------------------------------------------------------------------------
def test_quantise_inverts_dequantise_on_all_levels():
    levels = np.arange(NUM_LEVELS, dtype=np.uint8)
    values = dequantise(levels)
    assert values.dtype == np.float32 and values[0] == 0.0 and values[-1] == 1.0
    np.testing.assert_array_equal(quantise(values), levels)
    torch.testing.assert_close(dequantise(torch.from_numpy(levels)), torch.from_numpy(values))


def test_quantise_maps_black_to_0_and_white_to_15():
    out = quantise(np.array([0.0, 1.0, 0.5, 1 / 16 - 1e-6, 1 / 16]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 15, 8, 0, 1])


def test_downsample_is_exact_2x2_mean():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    out = downsample_frames(frames, 4)
    expected = np.empty((2, 3, 4, 4))
    for i in range(4):
        for j in range(4):
            expected[..., i, j] = frames[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(np.float64).mean(axis=(-2, -1))
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected / 255.0, rtol=0, atol=1e-6)


def test_downsample_rejects_a_size_that_is_not_a_multiple():
    with pytest.raises(DataSourceError, match="not a multiple"):
        downsample_frames(np.zeros((1, 30, 30), np.uint8), 8)


def copilot4d_levels(frame: np.ndarray) -> np.ndarray:
    """copilot4D's tokens of one 64 x 64 uint8 frame, written out: its bilinear zoom, then floor(15 x) in integers."""
    return ndimage.zoom(frame, 0.5, order=1).astype(np.int64) * 15 // 255


def test_copilot4d_levels_of_constant_frames_are_floor_15x():
    """Only white is level 15 (254 -> 14, 128 -> 7, where area gives 15 and 8); every value 0..255 checked."""
    values = np.arange(256, dtype=np.uint8)
    frames = np.broadcast_to(values[:, None, None], (256, CANVAS, CANVAS))
    levels = frames_to_tokens(frames, FRAME, "copilot4d")
    assert levels.shape == (256, FRAME, FRAME) and levels.dtype == np.uint8
    np.testing.assert_array_equal(levels, np.broadcast_to((values.astype(np.int64) * 15 // 255)[:, None, None], levels.shape))
    assert [levels[v, 0, 0] for v in (255, 254, 128, 17, 16, 0)] == [15, 14, 7, 1, 0, 0]
    assert [frames_to_tokens(frames, FRAME, "area")[v, 0, 0] for v in (255, 254, 128)] == [15, 15, 8]


def test_copilot4d_zoom_aligns_the_corner_pixels():
    """The bilinear zoom samples input columns 0 and 63 exactly (output 0 and 31) and skips column 1."""
    frame = np.zeros((CANVAS, CANVAS), np.uint8)
    frame[:, [0, 63]] = 255
    expected = np.zeros((FRAME, FRAME), np.uint8)
    expected[:, [0, 31]] = 15
    np.testing.assert_array_equal(frames_to_tokens(frame, FRAME, "copilot4d"), expected)
    frame[:, [0, 63]], frame[:, 1] = 0, 255
    np.testing.assert_array_equal(frames_to_tokens(frame, FRAME, "copilot4d"), 0)
    assert frames_to_tokens(frame, FRAME, "area")[0, 0] == 8  # the 2x2 average sees it


def test_copilot4d_levels_of_a_pattern_equal_the_per_frame_zoom_formula():
    frame = np.kron(np.array([[0, 90], [200, 255]], np.uint8), np.ones((2, 2), np.uint8))  # 4 x 4 tile of 2 x 2 blocks
    frame = np.tile(frame, (16, 16))
    frame[10:30, 5:41] = np.arange(36, dtype=np.uint8) * 7  # a ramp over it
    levels = frames_to_tokens(frame, FRAME, "copilot4d")
    np.testing.assert_array_equal(levels, copilot4d_levels(frame))
    assert len(np.unique(levels)) > 5 and not np.array_equal(levels, frames_to_tokens(frame, FRAME, "area"))


def test_copilot4d_tokens_of_a_video_equal_frame_by_frame_and_whole_array_zoom():
    """Frames (N, T, S, S) are tokenised frame by frame; a 4-D zoom with factors (1, 1, 0.5, 0.5) agrees."""
    _, _, videos = two_digit_videos(seed=5, num_sequences=3, num_frames=4)
    videos = videos // np.random.default_rng(0).integers(1, 4, videos.shape, dtype=np.uint8)  # uneven ink
    levels = frames_to_tokens(videos, FRAME, "copilot4d")
    assert levels.shape == (3, 4, FRAME, FRAME) and levels.dtype == np.uint8
    per_frame = np.stack([[copilot4d_levels(frame) for frame in video] for video in videos])
    whole = ndimage.zoom(videos, (1, 1, 0.5, 0.5), order=1).astype(np.int64) * 15 // 255
    np.testing.assert_array_equal(levels, per_frame)
    np.testing.assert_array_equal(levels, whole)


def test_unknown_preprocessing_is_one_line_naming_the_choices(tmp_path, mnist_npz):
    expected = "unknown preprocessing 'bilinear': expected one of area, copilot4d"
    for call in (lambda: frames_to_tokens(np.zeros((2, CANVAS, CANVAS), np.uint8), FRAME, "bilinear"),
                 lambda: import_moving_mnist(tmp_path / "missing.npy", tmp_path / "out", preprocessing="bilinear"),
                 lambda: make_small(tmp_path / "mm", mnist_npz, preprocessing="bilinear")):
        with pytest.raises(DataSourceError) as err:
            call()
        assert str(err.value) == expected
    for options, what in ((MovingMnistOptions, "data make moving-mnist option"), (MovingMnistImportOptions, "data import moving-mnist option")):
        with pytest.raises(ConfigError, match="'preprocessing': expected 'area' \\| 'copilot4d', got 'bilinear'") as err:
            load_options(options, ["preprocessing=bilinear"], what)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("options", [MovingMnistOptions, MovingMnistImportOptions])
def test_data_options_offer_exactly_the_preprocessing_choices(options):
    assert get_args(get_type_hints(options)["preprocessing"]) == PREPROCESSING and options().preprocessing == "area"


# --- ego actions ----------------------------------------------------------------------------------
def centre_of_mass(frames: np.ndarray) -> np.ndarray:
    """``(..., F, F)`` -> ``(..., 2)`` ``(x, y)`` ink centre in pixels of the frame."""
    grid = np.arange(frames.shape[-1], dtype=np.float64)
    mass = frames.sum(axis=(-2, -1))
    return np.stack([(frames * grid).sum(axis=(-2, -1)) / mass, (frames * grid[:, None]).sum(axis=(-2, -1)) / mass], -1)


def test_ego_actions_equal_rendered_displacement_of_the_tracked_digit():
    """action[t] = (centre of the ego digit's 32 px rendering at t minus at t-1) / 16, action[0] = 0."""
    offsets, digits, _ = two_digit_videos(seed=3, num_sequences=16, num_frames=12)
    actions = ego_actions(offsets, digits, ego_digit_id=0, canvas_size=CANVAS, frame_size=FRAME)
    alone = render_sequences(digits[:, 1:], offsets[:, 1:])  # digit 1 (the square) has more ink
    centre = centre_of_mass(downsample_frames(alone, FRAME).astype(np.float64))
    assert actions.shape == (16, 12, 2) and actions.dtype == np.float32
    np.testing.assert_array_equal(actions[:, 0], 0.0)
    np.testing.assert_allclose(actions[:, 1:], (centre[:, 1:] - centre[:, :-1]) / (FRAME / 2), rtol=0, atol=1e-5)
    assert np.abs(actions).max() > 0


@pytest.mark.parametrize("square_index", [0, 1])
def test_ego_digit_id_0_picks_the_digit_with_more_ink(square_index):
    offsets, digits, _ = two_digit_videos(seed=4, num_sequences=8, num_frames=6)
    if square_index == 0:
        digits = digits[:, ::-1].copy()
    ring_index = 1 - square_index
    biggest = ego_actions(offsets, digits, 0, CANVAS, FRAME)
    smallest = ego_actions(offsets, digits, 1, CANVAS, FRAME)
    np.testing.assert_array_equal(biggest, ego_actions(offsets[:, [square_index]], digits[:, [square_index]], 0, CANVAS, FRAME))
    np.testing.assert_array_equal(smallest, ego_actions(offsets[:, [ring_index]], digits[:, [ring_index]], 0, CANVAS, FRAME))
    assert not np.array_equal(biggest, smallest)


@pytest.mark.parametrize("ego", [-1, 2])
def test_invalid_ego_digit_id_raises(ego):
    offsets, digits, _ = two_digit_videos(seed=0, num_sequences=2, num_frames=3)
    with pytest.raises(DataSourceError, match="ego_digit_id"):
        ego_actions(offsets, digits, ego, CANVAS, FRAME)


# --- tracking -------------------------------------------------------------------------------------
def select_sequences(frames: np.ndarray, apart_at_start: bool, count: int) -> np.ndarray:
    """Indices of sequences whose first frame has two separate digits (or one merged blob, but that
    separate in some later frame)."""
    chosen = []
    for n, video in enumerate(frames):
        counts = [blob_count(frame) for frame in video]
        if (counts[0] == 2) if apart_at_start else (counts[0] == 1 and 2 in counts):
            chosen.append(n)
    assert len(chosen) >= count
    return np.array(chosen[:count])


@pytest.mark.parametrize("ego", [0, 1])
def test_tracking_recovers_exact_actions_of_digits_apart_at_start(ego):
    offsets, digits, frames = two_digit_videos(seed=0, num_sequences=24, num_frames=16)
    keep = select_sequences(frames, apart_at_start=True, count=6)
    tracked = track_ego_actions(frames[keep], ego_digit_id=ego, frame_size=FRAME)
    exact = ego_actions(offsets[keep], digits[keep], ego, CANVAS, FRAME)
    assert tracked.shape == exact.shape and tracked.dtype == np.float32
    np.testing.assert_array_equal(tracked[:, 0], 0.0)
    hit = np.isclose(tracked, exact, rtol=0, atol=1e-6).all(-1)[:, 1:]
    assert hit.mean() >= 0.9, hit.astype(int)


def test_tracking_waits_for_a_frame_where_the_digits_are_apart():
    """Digits merged in frame 0 and apart later: the ego digit's template comes from the later frame."""
    offsets, digits, frames = two_digit_videos(seed=1, num_sequences=48, num_frames=16)
    keep = select_sequences(frames, apart_at_start=False, count=4)
    tracked = track_ego_actions(frames[keep], ego_digit_id=0, frame_size=FRAME)
    exact = ego_actions(offsets[keep], digits[keep], 0, CANVAS, FRAME)
    hit = np.isclose(tracked, exact, rtol=0, atol=1e-6).all(-1)[:, 1:]
    assert hit.mean() >= 0.9, hit.astype(int)


def test_tracking_an_all_black_sequence_raises():
    with pytest.raises(DataSourceError, match="black"):
        track_ego_actions(np.zeros((1, 3, CANVAS, CANVAS), np.uint8))


# --- dataset writers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory):
    """A tiny MNIST npz: 10 training squares/rings labelled 1/2, 6 test ones labelled 7/8."""
    images = np.stack([square(8 + i) if i % 2 else ring(12 + i, 4) for i in range(16)])
    labels = np.array([1, 2] * 5 + [7, 8] * 3, dtype=np.int64)
    path = tmp_path_factory.mktemp("mnist") / "tiny_mnist.npz"
    save_mnist_npz(MnistArrays(images=images, labels=labels, source="synthetic test digits", num_train=10), path)
    return path


def make_small(out_dir, mnist_npz, seed=3, **options):
    return make_moving_mnist(out_dir, sequences=5, val_sequences=2, test_sequences=3, frames=6, digits=2, size=CANVAS, frame_size=FRAME,
                             seed=seed, mnist_source=mnist_npz, cache_dir=out_dir.parent / "unused_cache", chunk=2, **options)


def test_make_moving_mnist_writes_token_splits(tmp_path, mnist_npz):
    make_small(tmp_path / "mm", mnist_npz)
    assert not (tmp_path / "unused_cache").exists()  # the given source is used, nothing downloaded
    manifest = read_manifest(tmp_path / "mm")
    assert manifest["attrs"]["frames"] == 6 and manifest["attrs"]["levels"] == NUM_LEVELS
    assert manifest["attrs"]["preprocessing"] == "area"
    for split, count, labels in (("train", 5, {1, 2}), ("val", 2, {1, 2}), ("test", 3, {7, 8})):
        data = load_split(tmp_path / "mm", split)
        assert data["tokens"].shape == (count, 6, FRAME, FRAME) and data["tokens"].dtype == np.uint8
        assert data["tokens"].max() < NUM_LEVELS
        assert data["actions"].shape == (count, 6, 2) and data["actions"].dtype == np.float32
        assert data["frames"].shape == (count, 6, CANVAS, CANVAS) and data["frames"].dtype == np.uint8
        assert data["digit_labels"].shape == (count, 2) and set(np.unique(data["digit_labels"])) <= labels
        np.testing.assert_array_equal(data["tokens"], quantise(downsample_frames(data["frames"], FRAME)))
        np.testing.assert_array_equal(data["actions"][:, 0], 0.0)
        assert data["frames"].any(axis=(2, 3)).all()  # every frame shows a digit


def test_make_moving_mnist_with_copilot4d_preprocessing(tmp_path, mnist_npz):
    make_small(tmp_path / "mm", mnist_npz, preprocessing="copilot4d")
    make_small(tmp_path / "area", mnist_npz)
    assert read_manifest(tmp_path / "mm")["attrs"]["preprocessing"] == "copilot4d"
    data, area = load_split(tmp_path / "mm", "train"), load_split(tmp_path / "area", "train")
    np.testing.assert_array_equal(data["tokens"], [[copilot4d_levels(frame) for frame in video] for video in data["frames"]])
    assert not np.array_equal(data["tokens"], area["tokens"])
    for field in ("frames", "actions", "digit_labels"):  # only the tokens change
        np.testing.assert_array_equal(data[field], area[field])


def test_make_moving_mnist_is_deterministic_given_seed(tmp_path, mnist_npz):
    make_small(tmp_path / "a", mnist_npz)
    make_small(tmp_path / "b", mnist_npz)
    make_small(tmp_path / "c", mnist_npz, seed=4)
    for split in ("train", "val", "test"):
        a, b, c = (load_split(tmp_path / name, split) for name in "abc")
        for field in a:
            np.testing.assert_array_equal(a[field], b[field], err_msg=f"{split}/{field}")
        assert not np.array_equal(a["frames"], c["frames"])


def write_npy(path, num_frames=6, num_sequences=4):
    _, _, frames = two_digit_videos(seed=2, num_sequences=num_sequences, num_frames=num_frames)
    np.save(path, np.ascontiguousarray(frames.transpose(1, 0, 2, 3)))  # (T, N, 64, 64) as mnist_test_seq.npy
    return frames


def test_import_moving_mnist_writes_token_splits(tmp_path):
    videos = write_npy(tmp_path / "seq.npy")
    import_moving_mnist(tmp_path / "seq.npy", tmp_path / "out", test_fraction=0.25, seed=0, chunk=2)
    seen = []
    for split, count in (("train", 3), ("test", 1)):
        data = load_split(tmp_path / "out", split)
        assert data["tokens"].shape == (count, 6, FRAME, FRAME) and data["tokens"].dtype == np.uint8
        assert data["actions"].shape == (count, 6, 2) and data["actions"].dtype == np.float32
        assert data["frames"].shape == (count, 6, CANVAS, CANVAS) and data["frames"].dtype == np.uint8
        np.testing.assert_array_equal(data["digit_labels"], np.full((count, 1), -1))
        np.testing.assert_array_equal(data["tokens"], quantise(downsample_frames(data["frames"], FRAME)))
        np.testing.assert_array_equal(data["actions"], track_ego_actions(data["frames"], 0, FRAME))
        seen.extend(data["frames"])
    # every input sequence lands in exactly one split, unchanged
    assert sorted(v.tobytes() for v in seen) == sorted(v.tobytes() for v in videos)


@pytest.mark.parametrize(
    "array",
    [np.zeros((6, 4, 64), np.uint8), np.zeros((6, 4, 64, 32), np.uint8), np.zeros((6, 4, 64, 64), np.float32)],
    ids=["3d", "not-square", "float"],
)
def test_import_rejects_a_wrongly_shaped_npy_naming_the_file(tmp_path, array):
    path = tmp_path / "bad_seq.npy"
    np.save(path, array)
    with pytest.raises(DataSourceError, match=re.escape(str(path))):
        import_moving_mnist(path, tmp_path / "out")


def test_import_of_a_missing_npy_names_the_file(tmp_path):
    path = tmp_path / "missing_seq.npy"
    with pytest.raises(DataSourceError, match=re.escape(str(path))):
        import_moving_mnist(path, tmp_path / "out")


def test_import_command_with_copilot4d_preprocessing_makes_the_source_tokens(tmp_path):
    """`genflow data import moving-mnist seq.npy preprocessing=copilot4d` on a (20, N, 64, 64) file."""
    videos = write_npy(tmp_path / "seq.npy", num_frames=20, num_sequences=3)
    command = get_data_command("import", "moving-mnist")
    options = load_options(command.options, ["preprocessing=copilot4d", f"out={tmp_path / 'out'}", "test_fraction=0.34", "val_fraction=0"],
                           "data import moving-mnist option")
    command.run(options, DataJob(command="test", progress=lambda done, total: None, source=tmp_path / "seq.npy"))
    assert read_manifest(tmp_path / "out")["attrs"]["preprocessing"] == "copilot4d"
    seen = []
    for split in ("train", "test"):
        data = load_split(tmp_path / "out", split)
        expected = np.array([[copilot4d_levels(frame) for frame in video] for video in data["frames"]])
        np.testing.assert_array_equal(data["tokens"], expected)
        assert not np.array_equal(data["tokens"], quantise(downsample_frames(data["frames"], FRAME)))  # the option took effect
        seen.extend(data["frames"])
    assert sorted(v.tobytes() for v in seen) == sorted(v.tobytes() for v in videos)
