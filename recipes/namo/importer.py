"""A user's NAMO scenes (one ``.npz`` per scene, the source format) -> resized mask shards:
`genflow data import namo DIR`.

One scene per file with keys ``robot_image``, ``goal_image``, ``movable_objects_image``,
``static_objects_image``, ``target_object`` and ``target_goal`` (legacy files: ``robot``, ``goal``,
``movable``, ``static`` for the first four), each a 2-D mask, typically (224, 224), of any dtype
(bool, 0/1 or 0-255 integers, floats). Files from the procedural generator (:mod:`.scenes`) are
float32 {0.0, 1.0} and also hold ``num_modes`` (a scalar) and ``mode_map`` (32, 32).

How a mask is binarised (its dtype and value range pick the scale; a pixel is on above half of it):

- bool: as is.
- integers: values in {0, 1}: on when 1; max in (1, 255]: a 0-255 image, on when > 127.5;
  negative values or max > 255: an error.
- floats: max <= 1.001: a [0, 1] mask, on when > 0.5 (the slack absorbs antialiasing and rounding
  overshoot such as 1.0000002); max in (1.5, 255.255]: a 0-255 image, on when > 127.5; a max in
  (1.001, 1.5], above 255.255, or a min below -0.001 of the scale (e.g. a mask already in [-1, 1]):
  an error naming the file, key and range found, since neither reading is plausible.

The masks are then resized by area averaging and re-binarised at half a bin (:func:`area_resize_masks`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from genflow.data.npz_import import ImportSummary, NpzFileError, import_npz_files, load_npz_arrays
from genflow.errors import DataSourceError

__all__ = ["NAMO_CONTEXT_CHANNELS", "NAMO_MODE_GRID", "area_resize_masks", "import_namo_npz", "namo_fields",
           "read_namo_npz"]

# Context channel order of the NAMO shards: a contract with the recipe.
NAMO_CONTEXT_CHANNELS = ("robot", "goal", "movable_objects", "static_objects", "target_object")
# Side of the planning grid that ``mode_map`` indexes.
NAMO_MODE_GRID = 32
# Float masks (module docstring): slack of a [0, 1] mask's max (and of the min, per unit of scale),
# and the max above which a float mask reads as 0-255.
_FLOAT_SLACK = 1e-3
_FLOAT_255_ABOVE = 1.5
# Source key for each mask, with the legacy key it may have instead (None: no legacy name).
_NAMO_KEYS = {
    "robot": ("robot_image", "robot"),
    "goal": ("goal_image", "goal"),
    "movable_objects": ("movable_objects_image", "movable"),
    "static_objects": ("static_objects_image", "static"),
    "target_object": ("target_object", None),
    "target_goal": ("target_goal", None),
}
_WANTED = [(name, key, legacy, True) for name, (key, legacy) in _NAMO_KEYS.items()]
_WANTED += [("num_modes", "num_modes", None, False), ("mode_map", "mode_map", None, False)]


def area_resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Resizes binary masks by area averaging and re-binarises them at 0.5.

    Output pixel ``(i, j)`` averages the input rows ``[floor(i H / S), ceil((i + 1) H / S))`` and the
    same for columns: exactly the bins of ``torch.nn.functional.interpolate(mode="area")`` (adaptive
    average pooling). Counting with integer box sums makes the result exact: a pixel is on when at
    least half of its bin is on. When every bin lies inside one cell of a cell-aligned mask (224 px
    of 7-px cells -> 64 px) the result is that cell's value, with no rounding at all.

    Args:
        masks: ``(C, H, W)`` bool.
        size: Output side S.

    Returns:
        ``(C, S, S)`` uint8 in {0, 1}.
    """
    masks = np.asarray(masks, dtype=bool)
    channels, height, width = masks.shape
    if (height, width) == (size, size):
        return masks.astype(np.uint8)
    rows0, rows1 = _bins(height, size)
    cols0, cols1 = _bins(width, size)
    # Box sums by running sums, each along the last (contiguous) axis: numpy's cumsum is several
    # times slower along a strided axis. Columns first, then (transposed) rows.
    running = np.zeros((channels, height, width + 1), np.int32)
    np.cumsum(masks, axis=2, dtype=np.int32, out=running[:, :, 1:])
    col_sums = (running[:, :, cols1] - running[:, :, cols0]).transpose(0, 2, 1)  # (C, S, H)
    running = np.zeros((channels, size, height + 1), np.int32)
    np.cumsum(col_sums, axis=2, out=running[:, :, 1:])
    counts = (running[:, :, rows1] - running[:, :, rows0]).transpose(0, 2, 1)  # (C, S, S)
    area = (rows1 - rows0)[:, None] * (cols1 - cols0)[None, :]
    return (2 * counts >= area).astype(np.uint8)


def _bins(length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Start (floor) and end (ceil) of each of ``size`` adaptive-pooling bins over ``length``."""
    i = np.arange(size, dtype=np.int64)
    return (i * length) // size, -((-(i + 1) * length) // size)


def read_namo_npz(path: str | Path, image_size: int = 64) -> dict[str, np.ndarray]:
    """Reads one NAMO scene and converts it to the shard fields (see :func:`namo_fields`).

    Masks are binarised by their dtype and value range (the rule in this module's docstring: bool
    as is, {0, 1} or [0, 1] on above 0.5, 0-255 on above 127.5), resized to ``image_size`` by area
    averaging and re-binarised at 0.5 (:func:`area_resize_masks`).

    Args:
        path: The ``.npz`` file.
        image_size: Output side S.

    Returns:
        ``context`` (5, S, S) uint8 (channels :data:`NAMO_CONTEXT_CHANNELS`), ``target_goal``
        (1, S, S) uint8, ``num_modes`` () int16 (-1 when the file has none), ``mode_map`` (32, 32)
        uint8 (zeros when the file has none).

    Raises:
        NpzFileError: The file cannot be read (not an npz, truncated, needs pickle), misses a key,
            holds a mask that is not 2-D, masks of different shapes, non-finite values, a value range
            that is neither [0, 1] nor 0-255, an empty ``target_goal``, or a malformed
            ``num_modes``/``mode_map``. ``reason`` says which.
    """
    path = Path(path)
    raw = load_npz_arrays(path, _WANTED)
    masks = []
    shapes = {}
    for name, (key, _legacy) in _NAMO_KEYS.items():
        array = raw[name]
        if array.ndim != 2 or 0 in array.shape:
            raise NpzFileError(path, f"{key!r} has shape {array.shape}, expected a 2-D mask like (224, 224)")
        shapes[key] = array.shape
        masks.append(_binarise(array, path, key))
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{key} {shape}" for key, shape in shapes.items())
        raise NpzFileError(path, f"masks have different shapes ({listed})")
    if not masks[-1].any():
        raise NpzFileError(path, "'target_goal' is empty (no pixel set)")
    resized = area_resize_masks(np.stack(masks), image_size)
    if not resized[-1].any():
        raise NpzFileError(path, f"'target_goal' is empty after resizing to {image_size}x{image_size}")
    return {
        "context": resized[:5],
        "target_goal": resized[5:],
        "num_modes": _num_modes(raw.get("num_modes"), path),
        "mode_map": _mode_map(raw.get("mode_map"), path),
    }


def _binarise(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(H, W) mask of any dtype -> bool, by the rule in this module's docstring."""
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "uif":
        raise NpzFileError(path, f"{key!r} has dtype {array.dtype}, expected bool, integer or float")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise NpzFileError(path, f"{key!r} has non-finite values (NaN or inf)")
    low, high = array.min(), array.max()
    if array.dtype.kind == "f":
        if high <= 1 + _FLOAT_SLACK:
            scale = 1
        elif _FLOAT_255_ABOVE < high <= 255 * (1 + _FLOAT_SLACK):
            scale = 255
        else:
            scale = 0
        fits = scale > 0 and low >= -_FLOAT_SLACK * scale
        expected = f"[0, 1] (max <= {1 + _FLOAT_SLACK:g}) or 0-255 (max in ({_FLOAT_255_ABOVE:g}, 255])"
    else:
        scale = 1 if high <= 1 else 255
        fits = low >= 0 and high <= 255
        expected = "{0, 1} or 0-255"
    if not fits:
        raise NpzFileError(path, f"{key!r} ({array.dtype}) has values in [{low:.7g}, {high:.7g}], "
                                 f"expected a mask in {expected}")
    # On above half the scale, compared in the array's own dtype (no float copy of a 224 x 224 mask).
    return array > 0.5 * scale


def _num_modes(value: np.ndarray | None, path: Path) -> np.ndarray:
    if value is None:
        return np.array(-1, np.int16)
    if value.size != 1 or value.dtype.kind not in "ui" or not 0 <= int(value.reshape(())) <= np.iinfo(np.int16).max:
        raise NpzFileError(
            path, f"'num_modes' is {value.dtype} {value.shape} {value.ravel()[:3]}, expected one integer in [0, 32767]"
        )
    return np.array(int(value.reshape(())), np.int16)


def _mode_map(value: np.ndarray | None, path: Path) -> np.ndarray:
    grid = (NAMO_MODE_GRID, NAMO_MODE_GRID)
    if value is None:
        return np.zeros(grid, np.uint8)
    if value.shape != grid or value.dtype.kind not in "uib":
        raise NpzFileError(path, f"'mode_map' is {value.dtype} {value.shape}, expected integers of shape {grid}")
    if value.size and (value.min() < 0 or value.max() > 255):
        raise NpzFileError(path, f"'mode_map' has values in [{value.min()}, {value.max()}], expected mode ids 0-255")
    return value.astype(np.uint8)


def namo_fields(image_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shard fields of a NAMO dataset at side S = ``image_size`` (plus ``file_index``, added by the driver)."""
    return {
        "context": ((len(NAMO_CONTEXT_CHANNELS), image_size, image_size), "uint8"),
        "target_goal": ((1, image_size, image_size), "uint8"),
        "num_modes": ((), "int16"),
        "mode_map": ((NAMO_MODE_GRID, NAMO_MODE_GRID), "uint8"),
    }



def import_namo_npz(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    image_size: int = 64,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    limit: int | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
    max_shard_bytes: int = 256 * 2**20,
) -> ImportSummary:
    """Converts a directory of NAMO scene ``.npz`` files into a shard dataset with splits train / val / test.

    Fields per sample: ``context`` (5, S, S) uint8 {0,1} (channels robot, goal, movable_objects,
    static_objects, target_object), ``target_goal`` (1, S, S) uint8 {0,1}, ``num_modes`` () int16
    (-1: not in the file), ``mode_map`` (32, 32) uint8 (zeros: not in the file), ``file_index`` ()
    int32 (line of ``files.txt``). See :func:`read_namo_npz` for the per-file conversion.

    Args:
        src_dir: Directory searched recursively for ``*.npz``.
        out_dir: Dataset directory to write.
        image_size: Side S of the resized masks.
        val_fraction: Fraction of the files that go to ``val``, held out of train (best checkpoints
            are chosen on it; a seeded random choice of files, at least one when the fraction is > 0).
        test_fraction: Fraction of the files that go to ``test`` (likewise).
        seed: Seed for ``limit``'s choice of files and for the split.
        overwrite: Replace an existing dataset in ``out_dir``.
        limit: Convert at most this many files (a seeded random choice).
        workers: Processes that read and resize files (0: in this process). Output is the same.
        progress: Called as ``progress(done, total)`` after each chunk of files.
        command: CLI command that makes this dataset, recorded for re-create hints.
        max_shard_bytes: Shard size bound for :class:`~genflow.data.shards.ShardWriter`.

    Returns:
        An :class:`ImportSummary`; skipped files are listed in it and in ``out_dir/skipped.txt``.

    Raises:
        DataSourceError: ``src_dir`` is missing or holds no ``.npz``, or no file converts (the
            message quotes the first reasons), or an argument is out of range.
    """
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataSourceError(f"import_namo_npz: image_size must be a positive integer, got {image_size!r}")
    return import_npz_files(
        kind="namo",
        src_dir=src_dir,
        out_dir=out_dir,
        read_file=functools.partial(read_namo_npz, image_size=int(image_size)),
        fields=namo_fields(int(image_size)),
        attrs={
            "image_size": int(image_size),
            "context_channels": list(NAMO_CONTEXT_CHANNELS),
            "mode_grid": NAMO_MODE_GRID,
            "binarise": "bool as is; ints {0,1} >0.5, ints max in (1,255] >127.5; floats max<=1.001 >0.5, "
                        "max in (1.5,255.255] >127.5, else an error; area resize; on when >=half of a bin is on",
        },
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        overwrite=overwrite,
        limit=limit,
        workers=workers,
        progress=progress,
        command=command,
        max_shard_bytes=max_shard_bytes,
    )


