"""Moving MNIST with ego-centric actions, as token videos for the mmnist-wm world model.

Generator: the standard bouncing-digits generator of Srivastava et al. (2015). Each digit (28 x 28,
real MNIST) starts at a position ``p ~ U[0, 1)^2`` with direction ``theta ~ U[0, 2 pi)`` and moves
``0.1`` canvas units per frame; each frame it moves first, then a coordinate that left ``[0, 1]`` is
clamped and its velocity component flipped. Its top-left pixel is ``int((size - 28) * p)``; digits
are combined with ``max``. Train sequences draw digits from the MNIST training images, test
sequences from the MNIST test images.

Preprocessing (:func:`frames_to_tokens`): frames become ``frame_size`` (32 x 32 from 64 x 64) frames
of 16 levels. genflow's default, ``preprocessing="area"``, averages each 2 x 2 block and takes
``level = min(floor(16 x), 15)`` for ``x`` in [0, 1]. ``preprocessing="copilot4d"`` makes the tokens
of the source (copilot4D's Moving MNIST code): a bilinear ``scipy.ndimage.zoom(frame, 0.5, order=1)``
of each uint8 frame, then ``level = floor(15 x)`` in float32, so only white (255) is level 15. Either
way a level dequantises to ``level / 15`` so that black stays 0 and white 1. Token id 16 is the mask
token of the model.

Ego-centric actions: the displacement of one digit (``ego_digit_id``; 0 = the one with the most ink)
between frames, normalised by half the token frame size as copilot4D normalises its own::

    action[t] = (centre[t] - centre[t - 1]) / (frame_size / 2),  action[0] = 0

in token-frame pixels, i.e. in [-1, 1]. The generator knows every digit's exact pixel trajectory,
so generated datasets use it. For the canonical ``mnist_test_seq.npy`` (no trajectories), the digit
is found in the first frame where the digits are apart and tracked by template matching
(:func:`track_ego_actions`); the tracked actions are cached in the shards. (copilot4D estimates its
actions otherwise: from the centre of mass of pixels above 50 in the downsampled frames, with
``action[0] = action[1]``; docs/recipes/mmnist-wm.md.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genflow.data.mnist import load_mnist
from genflow.data.shards import ShardWriter, check_split_fractions, split_indices
from genflow.errors import DataSourceError

__all__ = [
    "DIGIT_SIZE",
    "MASK_TOKEN",
    "NUM_LEVELS",
    "PREPROCESSING",
    "bouncing_trajectories",
    "dequantise",
    "downsample_frames",
    "ego_actions",
    "frames_to_tokens",
    "import_moving_mnist",
    "make_moving_mnist",
    "quantise",
    "render_sequences",
    "track_ego_actions",
]

DIGIT_SIZE = 28
NUM_LEVELS = 16
MASK_TOKEN = NUM_LEVELS  # token id 16
STEP_LENGTH = 0.1
VAL_DIGIT_FRACTION = 0.1  # of the official MNIST training digits, reserved for val sequences
PREPROCESSING = ("area", "copilot4d")  # frames -> tokens: genflow's default, or the source's (see frames_to_tokens)


# --- generator -------------------------------------------------------------------------------------


def bouncing_trajectories(
    rng: np.random.Generator, num_sequences: int, num_frames: int, num_digits: int, canvas_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of bouncing digits.

    Returns:
        ``positions`` ``(N, D, T, 2)`` float64 in [0, 1] as ``(x, y)`` and ``offsets`` ``(N, D, T, 2)``
        int32, the top-left pixel ``(column, row)`` of each digit in each frame.
    """
    position = rng.random((num_sequences, num_digits, 2))
    theta = rng.random((num_sequences, num_digits)) * 2 * np.pi
    velocity = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    positions = np.empty((num_sequences, num_digits, num_frames, 2))
    for t in range(num_frames):
        position = position + velocity * STEP_LENGTH
        below, above = position <= 0.0, position >= 1.0
        position = np.clip(position, 0.0, 1.0)
        velocity = np.where(below | above, -velocity, velocity)
        positions[:, :, t] = position
    offsets = ((canvas_size - DIGIT_SIZE) * positions).astype(np.int32)
    return positions, offsets


def render_sequences(digits: np.ndarray, offsets: np.ndarray, canvas_size: int = 64) -> np.ndarray:
    """Draws digits ``(N, D, 28, 28)`` uint8 at ``offsets`` ``(N, D, T, 2)`` -> frames ``(N, T, S, S)`` uint8."""
    num_sequences, num_digits, num_frames, _ = offsets.shape
    frames = np.zeros((num_sequences, num_frames, canvas_size, canvas_size), dtype=np.uint8)
    sequence = np.arange(num_sequences)[:, None, None]
    span = np.arange(DIGIT_SIZE)
    for t in range(num_frames):
        for d in range(num_digits):
            rows = (offsets[:, d, t, 1][:, None] + span)[:, :, None]
            cols = (offsets[:, d, t, 0][:, None] + span)[:, None, :]
            canvas = frames[:, t]
            canvas[sequence, rows, cols] = np.maximum(canvas[sequence, rows, cols], digits[:, d])
    return frames


def downsample_frames(frames: np.ndarray, frame_size: int) -> np.ndarray:
    """Area-average ``(..., S, S)`` uint8 frames to ``(..., F, F)`` float32 in [0, 1] (S a multiple of F)."""
    size = frames.shape[-1]
    if size % frame_size:
        raise DataSourceError(f"frame size {size} is not a multiple of the token frame size {frame_size}")
    factor = size // frame_size
    blocks = frames.reshape(*frames.shape[:-2], frame_size, factor, frame_size, factor).astype(np.float32)
    return blocks.mean(axis=(-3, -1)) / 255.0


def quantise(images: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> levels ``min(floor(16 x), 15)`` as uint8."""
    return np.minimum(np.floor(np.asarray(images) * NUM_LEVELS), NUM_LEVELS - 1).astype(np.uint8)


def dequantise(levels):
    """Levels 0..15 -> values ``level / 15`` in [0, 1] (numpy array or torch tensor, float32)."""
    return levels.astype(np.float32) / (NUM_LEVELS - 1) if isinstance(levels, np.ndarray) else levels.float() / (NUM_LEVELS - 1)


def frames_to_tokens(video: np.ndarray, frame_size: int, preprocessing: str = "area") -> np.ndarray:
    """Frames ``(..., S, S)`` uint8 -> token levels ``(..., F, F)`` uint8 in 0..15.

    ``area``: :func:`downsample_frames` (area average, S a multiple of F), then :func:`quantise`
    (``min(floor(16 x), 15)``). ``copilot4d``: copilot4D's tokens: each 2-D frame is resized by
    ``scipy.ndimage.zoom(frame, F / S, order=1)`` (bilinear, corner pixels aligned, back to uint8 as
    scipy casts), then ``floor(x / 255 * 15)`` computed in float32, so only 255 is level 15.
    """
    _check_preprocessing(preprocessing)
    if preprocessing == "area":
        return quantise(downsample_frames(video, frame_size))
    from scipy import ndimage

    size = video.shape[-1]
    flat = video.reshape(-1, size, size)
    resized = np.empty((len(flat), frame_size, frame_size), dtype=np.uint8)
    for i, frame in enumerate(flat):  # per 2-D frame as the source; also ~3x faster than one 4-D zoom
        resized[i] = ndimage.zoom(frame, frame_size / size, order=1)
    levels = (resized.astype(np.float32) / 255.0 * (NUM_LEVELS - 1)).astype(np.uint8)
    return levels.reshape(*video.shape[:-2], frame_size, frame_size)


def _check_preprocessing(preprocessing: str) -> None:
    if preprocessing not in PREPROCESSING:
        raise DataSourceError(f"unknown preprocessing {preprocessing!r}: expected one of {', '.join(PREPROCESSING)}")


def ego_actions(offsets: np.ndarray, digits: np.ndarray, ego_digit_id: int, canvas_size: int, frame_size: int) -> np.ndarray:
    """Exact ego-centric actions from the generator's pixel trajectories.

    Args:
        offsets: ``(N, D, T, 2)`` top-left pixels of each digit.
        digits: ``(N, D, 28, 28)`` the digit images (their ink decides which is largest).
        ego_digit_id: Rank of the tracked digit by ink, 0 = largest.

    Returns:
        ``(N, T, 2)`` float32 ``[dx, dy]``, ``action[:, 0] = 0``.
    """
    if not 0 <= ego_digit_id < digits.shape[1]:
        raise DataSourceError(f"ego_digit_id must be in [0, {digits.shape[1] - 1}], got {ego_digit_id}")
    ink = digits.reshape(*digits.shape[:2], -1).sum(axis=-1, dtype=np.int64)
    ego = np.argsort(-ink, axis=1, kind="stable")[:, ego_digit_id]
    tracked = offsets[np.arange(len(offsets)), ego].astype(np.float64)  # (N, T, 2), canvas pixels
    return _actions_from_positions(tracked, canvas_size, frame_size)


def _actions_from_positions(positions: np.ndarray, canvas_size: int, frame_size: int) -> np.ndarray:
    centre = positions * (frame_size / canvas_size)  # a fixed offset (the digit's centre) cancels
    actions = np.zeros(positions.shape, dtype=np.float32)
    actions[:, 1:] = (centre[:, 1:] - centre[:, :-1]) / (frame_size / 2)
    return actions


# --- tracking, for sequences without trajectories --------------------------------------------------


def track_ego_actions(frames: np.ndarray, ego_digit_id: int = 0, frame_size: int = 32, search: int = 5) -> np.ndarray:
    """Ego-centric actions of sequences ``(N, T, S, S)`` uint8 estimated by tracking one digit.

    The digit is cut out of the first frame where the two largest blobs are apart (8-connected
    pixels > 0, each at least 20 pixels), as a template of the blob's pixels; it is then followed
    forwards and backwards, frame by frame, to the shift within ``+-search`` pixels whose window
    misses the least template ink (overlaps with other digits only add ink under ``max``).

    Returns:
        ``(N, T, 2)`` float32 actions, normalised as :func:`ego_actions`.
    """
    from scipy import ndimage


    num_sequences, num_frames, size, _ = frames.shape
    positions = np.zeros((num_sequences, num_frames, 2))
    for n in range(num_sequences):
        reference, template, top_left = _find_digit(frames[n], ego_digit_id, ndimage)
        positions[n, reference] = top_left
        for direction in (1, -1):
            current = np.array(top_left)
            t = reference + direction
            while 0 <= t < num_frames:
                current = _best_shift(frames[n, t], template, current, search)
                positions[n, t] = current
                t += direction
    return _actions_from_positions(positions, size, frame_size)


def _find_digit(sequence: np.ndarray, ego_digit_id: int, ndimage) -> tuple[int, np.ndarray, tuple[int, int]]:
    structure = np.ones((3, 3), dtype=bool)
    best = None
    for t, frame in enumerate(sequence):
        labels, count = ndimage.label(frame > 0, structure=structure)
        if count == 0:
            continue
        ink = ndimage.sum(frame.astype(np.int64), labels, index=np.arange(1, count + 1))
        sizes = ndimage.sum(np.ones_like(frame), labels, index=np.arange(1, count + 1))
        order = [i for i in np.argsort(-ink, kind="stable") if sizes[i] >= 20]
        if len(order) > max(ego_digit_id, 1):  # the digits are apart (>= 2 blobs)
            best = (t, labels == order[ego_digit_id] + 1)
            break
        if best is None:
            best = (t, labels == np.argmax(ink) + 1)
    if best is None:
        raise DataSourceError("a sequence has no digit in any frame (all frames are black)")
    t, blob = best
    rows, cols = np.nonzero(blob)
    top, left = rows.min(), cols.min()
    template = np.where(blob, sequence[t], 0)[top : top + DIGIT_SIZE, left : left + DIGIT_SIZE].astype(np.float32)
    return t, template, (left, top)


def _best_shift(frame: np.ndarray, template: np.ndarray, top_left: np.ndarray, search: int) -> np.ndarray:
    height, width = template.shape
    size = frame.shape[0]
    padded = np.pad(frame.astype(np.float32), search + DIGIT_SIZE)
    pad = search + DIGIT_SIZE
    shifts = np.arange(-search, search + 1)
    best_score, best = np.inf, top_left
    for dy in shifts:
        for dx in shifts:
            left, top = top_left[0] + dx, top_left[1] + dy
            if not (-width < left < size and -height < top < size):
                continue
            window = padded[pad + top : pad + top + height, pad + left : pad + left + width]
            score = np.maximum(template - window, 0).sum() + 1e-3 * (dx * dx + dy * dy)
            if score < best_score:
                best_score, best = score, np.array([left, top])
    return best


# --- datasets --------------------------------------------------------------------------------------


def _fields(num_frames: int, canvas_size: int, frame_size: int, num_digits: int) -> dict:
    return {
        "tokens": ((num_frames, frame_size, frame_size), "uint8"),
        "actions": ((num_frames, 2), "float32"),
        "frames": ((num_frames, canvas_size, canvas_size), "uint8"),
        "digit_labels": ((num_digits,), "int16"),
    }


def make_moving_mnist(
    out_dir: str | Path,
    *,
    sequences: int = 4000,
    val_sequences: int = 500,
    test_sequences: int = 1000,
    frames: int = 20,
    digits: int = 2,
    size: int = 64,
    frame_size: int = 32,
    ego_digit_id: int = 0,
    preprocessing: str = "area",
    seed: int = 0,
    mnist_source: str | Path | None = None,
    cache_dir: str | Path = "datasets/raw",
    overwrite: bool = False,
    chunk: int = 500,
    command: str | None = None,
) -> dict:
    """Generates Moving MNIST train / val / test splits from real MNIST digits and writes token shards.

    Test sequences use the official MNIST test digits. A seeded 10 % of the official training digits
    is kept for the val sequences only, so validation digits never appear in a training sequence.

    Fields per sequence: ``tokens`` ``(T, F, F)`` uint8 levels, ``actions`` ``(T, 2)`` float32,
    ``frames`` ``(T, S, S)`` uint8 (the full-resolution frames, for evaluation) and ``digit_labels``
    ``(D,)``. Tokens are made by :func:`frames_to_tokens` with ``preprocessing``. Sequence i of a
    split depends only on (seed, split, i // chunk).

    Returns:
        The manifest.
    """
    if size < DIGIT_SIZE:
        raise DataSourceError(f"--size must be at least {DIGIT_SIZE} (the digit size), got {size}")
    if size % frame_size:
        raise DataSourceError(f"--size {size} must be a multiple of the token frame size {frame_size}")
    if digits < 1 or frames < 2 or sequences < 1 or test_sequences < 0 or val_sequences < 0:
        raise DataSourceError("need at least 1 digit, 2 frames and 1 training sequence")
    if not 0 <= ego_digit_id < digits:
        raise DataSourceError(f"--ego-digit-id must be in [0, {digits - 1}], got {ego_digit_id}")
    _check_preprocessing(preprocessing)
    mnist = load_mnist(mnist_source, cache_dir=cache_dir)
    digit_parts = split_indices(np.random.default_rng([seed, 2]).permutation(mnist.num_train), val_fraction=VAL_DIGIT_FRACTION,
                                test_fraction=0.0)
    digit_indices = {"train": np.sort(digit_parts["train"]), "val": np.sort(digit_parts["val"]),
                     "test": np.arange(mnist.num_train, len(mnist.images))}
    attrs = {
        "frames": frames, "digits": digits, "size": size, "frame_size": frame_size, "levels": NUM_LEVELS,
        "preprocessing": preprocessing, "ego_digit_id": ego_digit_id, "actions": "exact generator trajectories", "step_length": STEP_LENGTH,
        "val_digit_fraction": VAL_DIGIT_FRACTION,
    }
    source = {"mnist": mnist.source, "generator": "bouncing digits (Srivastava et al. 2015)", "command": command or "genflow data make-moving-mnist"}
    with ShardWriter(out_dir, _fields(frames, size, frame_size, digits), seed=seed, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for split, count in (("train", sequences), ("val", val_sequences), ("test", test_sequences)):
            pool, label_pool = mnist.images[digit_indices[split]], mnist.labels[digit_indices[split]]
            writer.write(split, **{name: np.zeros((0, *shape), dtype)
                                   for name, (shape, dtype) in _fields(frames, size, frame_size, digits).items()})
            for index, start in enumerate(range(0, count, chunk)):
                rng = np.random.default_rng([seed, {"train": 0, "test": 1, "val": 2}[split], index])
                n = min(chunk, count - start)
                chosen = rng.integers(0, len(pool), size=(n, digits))
                _, offsets = bouncing_trajectories(rng, n, frames, digits, size)
                video = render_sequences(pool[chosen], offsets, size)
                writer.write(
                    split,
                    tokens=frames_to_tokens(video, frame_size, preprocessing),
                    actions=ego_actions(offsets, pool[chosen], ego_digit_id, size, frame_size),
                    frames=video,
                    digit_labels=label_pool[chosen].astype(np.int16),
                )
    return writer.close()


def import_moving_mnist(
    npy_path: str | Path,
    out_dir: str | Path,
    *,
    frame_size: int = 32,
    ego_digit_id: int = 0,
    preprocessing: str = "area",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limit: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    chunk: int = 500,
    command: str | None = None,
) -> dict:
    """Converts a canonical ``mnist_test_seq.npy`` ``(T, N, S, S)`` uint8 into token shards.

    Tokens are made by :func:`frames_to_tokens` with ``preprocessing`` (``copilot4d``: the tokens
    copilot4D makes of this file). Actions are estimated by :func:`track_ego_actions`. A seeded
    permutation sends ``test_fraction`` of the sequences to ``test`` and ``val_fraction`` to ``val``.
    Digit labels are unknown (-1).
    """
    _check_preprocessing(preprocessing)
    path = Path(npy_path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file (expected the Moving MNIST .npy, shape (T, N, 64, 64) uint8)")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataSourceError(f"{path}: not a readable .npy file ({err})") from None
    if array.ndim != 4 or array.shape[2] != array.shape[3] or array.dtype != np.uint8:
        raise DataSourceError(f"{path}: expected shape (T, N, S, S) uint8 as mnist_test_seq.npy, got {array.shape} {array.dtype}")
    num_frames, num_sequences, size, _ = array.shape
    if size % frame_size:
        raise DataSourceError(f"{path}: frame size {size} is not a multiple of the token frame size {frame_size}")
    check_split_fractions(val_fraction, test_fraction, f"{path}")
    order = np.random.default_rng(seed).permutation(num_sequences)[: limit or num_sequences]
    splits = {k: np.sort(v) for k, v in split_indices(order, val_fraction=val_fraction, test_fraction=test_fraction).items()}
    attrs = {"val_fraction": val_fraction, "test_fraction": test_fraction, "frames": num_frames, "size": size, "frame_size": frame_size, "levels": NUM_LEVELS,
             "preprocessing": preprocessing, "ego_digit_id": ego_digit_id, "actions": "tracked (template matching of the ego digit)"}
    source = {"file": str(path.resolve()), "command": command or f"genflow data import-moving-mnist {path}"}
    fields = _fields(num_frames, size, frame_size, 1)
    with ShardWriter(out_dir, fields, seed=seed, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for split, indices in splits.items():
            writer.write(split, **{name: np.zeros((0, *shape), dtype) for name, (shape, dtype) in fields.items()})
            for start in range(0, len(indices), chunk):
                picked = indices[start : start + chunk]
                video = np.ascontiguousarray(np.asarray(array[:, picked]).transpose(1, 0, 2, 3))
                writer.write(
                    split,
                    tokens=frames_to_tokens(video, frame_size, preprocessing),
                    actions=track_ego_actions(video, ego_digit_id, frame_size),
                    frames=video,
                    digit_labels=np.full((len(picked), 1), -1, dtype=np.int16),
                )
    return writer.close()
