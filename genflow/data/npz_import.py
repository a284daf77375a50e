"""Directories of per-scene ``.npz`` files -> HDF5 shards.

Some source systems store one ``.npz`` per sample. Reading 100k small zip archives per epoch is slow
and fragile, so we convert them once into shards (:mod:`genflow.data.shards`). Each *kind* of npz
has a reader (one file -> one sample's fields) and is listed in :data:`IMPORTERS`; the driver that
finds the files, splits them, skips bad ones and writes the shards is shared.

NAMO (navigation among movable objects): one scene per file with keys ``robot_image``,
``goal_image``, ``movable_objects_image``, ``static_objects_image``, ``target_object`` and
``target_goal`` (legacy files: ``robot``, ``goal``, ``movable``, ``static`` for the first four), each
a 2-D mask, typically (224, 224), of any dtype (bool, 0/1 or 0-255 integers, floats). Files from our
procedural generator also hold ``num_modes`` (a scalar) and ``mode_map`` (32, 32).

A dataset written here holds, besides ``manifest.json`` and the shards:

- ``files.txt``: every candidate source file, relative to the source directory, one per line, in
  sorted order; line ``i`` (0-based) is the file of the samples whose ``file_index`` is ``i``.
  Files that were skipped are listed too (so indices never depend on which files failed).
- ``skipped.txt``: one line per skipped file, ``<relative name>\\t<reason>`` (empty if none).

Neither is a shard, so :class:`~genflow.data.shards.ShardWriter` and
:func:`~genflow.data.shards.verify_shards` ignore them; the manifest records the sha256 of
``files.txt``.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genflow.data.shards import ShardWriter, check_split_fractions
from genflow.errors import DataSourceError

__all__ = [
    "NAMO_CONTEXT_CHANNELS",
    "NAMO_MODE_GRID",
    "IMPORTERS",
    "ImportSummary",
    "NpzFileError",
    "area_resize_masks",
    "import_namo_npz",
    "import_npz",
    "namo_fields",
    "read_namo_npz",
]

# Context channel order of the NAMO shards: a contract with the recipe.
NAMO_CONTEXT_CHANNELS = ("robot", "goal", "movable_objects", "static_objects", "target_object")
# Side of the planning grid that ``mode_map`` indexes.
NAMO_MODE_GRID = 32
# Source key for each mask, with the legacy key it may have instead (None: no legacy name).
_NAMO_KEYS = {
    "robot": ("robot_image", "robot"),
    "goal": ("goal_image", "goal"),
    "movable_objects": ("movable_objects_image", "movable"),
    "static_objects": ("static_objects_image", "static"),
    "target_object": ("target_object", None),
    "target_goal": ("target_goal", None),
}
FILE_LIST_NAME = "files.txt"
SKIPPED_REPORT_NAME = "skipped.txt"
# Files read (and held in memory) per step: bounds memory to O(chunk) whatever the number of files.
_FILES_PER_CHUNK = 256
# Reasons quoted in the error raised when no file converts.
_REASONS_IN_ERROR = 3


class NpzFileError(DataSourceError):
    """One source file that cannot be converted; ``reason`` is the why without the path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class ImportSummary:
    """What an import did.

    Attributes:
        converted: Source files converted (for namo one sample each; a hands file holds many poses: see splits).
        skipped: ``(file name relative to src_dir, reason)`` per skipped file, sorted by name.
        out_dir: The dataset directory.
        splits: Split name -> samples written, e.g. ``{"train": 90, "test": 10}``.
        skipped_report: ``out_dir/skipped.txt``, the full list of skipped files and reasons.
        num_files: Candidate ``.npz`` files (after ``limit``); ``converted + len(skipped)``.
        manifest: The manifest written (fields, splits, ``attrs`` with the import options).
    """

    converted: int
    skipped: list[tuple[str, str]]
    out_dir: Path
    splits: dict[str, int]
    skipped_report: Path
    num_files: int = 0
    manifest: dict = field(default_factory=dict, repr=False)


# ----------------------------------------------------------------------------------------------
# Reading one file


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

    Masks are binarised (bool as is; otherwise values are scaled to [0, 1] by 1/255 when the mask's
    maximum exceeds 1, then ``> 0.5``), resized to ``image_size`` by area averaging and re-binarised
    at 0.5 (:func:`area_resize_masks`).

    Args:
        path: The ``.npz`` file.
        image_size: Output side S.

    Returns:
        ``context`` (5, S, S) uint8 (channels :data:`NAMO_CONTEXT_CHANNELS`), ``target_goal``
        (1, S, S) uint8, ``num_modes`` () int16 (-1 when the file has none), ``mode_map`` (32, 32)
        uint8 (zeros when the file has none).

    Raises:
        NpzFileError: The file cannot be read (not an npz, truncated, needs pickle), misses a key,
            holds a mask that is not 2-D, masks of different shapes, non-finite values, an empty
            ``target_goal``, or a malformed ``num_modes``/``mode_map``. ``reason`` says which.
    """
    path = Path(path)
    raw = _load_arrays(path)
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


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The six masks (by canonical name) and the optional ``num_modes``/``mode_map`` of one file."""
    try:
        if path.stat().st_size == 0:
            raise NpzFileError(path, "empty file (0 bytes)")
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NpzFileError(path, "file not found") from None
    except NpzFileError:
        raise
    except ValueError as err:  # not a zip nor .npy: numpy falls back to pickle, which we refuse
        if "pickle" in str(err):
            raise NpzFileError(path, "not an npz archive (no zip header)") from None
        raise NpzFileError(path, f"cannot be read ({_short(err)})") from None
    except Exception as err:  # noqa: BLE001 - any read failure of one file is a skip, not a crash
        raise NpzFileError(path, f"cannot be read as npz ({type(err).__name__}: {_short(err)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise NpzFileError(path, "is a single .npy array, expected an npz archive of named arrays")
    with loaded:
        keys = set(loaded.files)
        out = {}
        wanted = [(name, key, legacy) for name, (key, legacy) in _NAMO_KEYS.items()]
        wanted += [("num_modes", "num_modes", None), ("mode_map", "mode_map", None)]
        for name, key, legacy in wanted:
            found = key if key in keys else legacy if legacy in keys else None
            if found is None:
                if name in ("num_modes", "mode_map"):
                    continue
                also = f" (or legacy {legacy!r})" if legacy else ""
                raise NpzFileError(path, f"missing key {key!r}{also}; the file has {sorted(keys)}")
            try:
                out[name] = np.asarray(loaded[found])
            except ValueError as err:
                if "pickle" in str(err):
                    raise NpzFileError(path, f"{found!r} is an object array (needs pickle, refused)") from None
                raise NpzFileError(path, f"cannot read {found!r} ({_short(err)})") from None
            except Exception as err:  # noqa: BLE001 - truncated/corrupt zip members raise many types
                raise NpzFileError(path, f"cannot read {found!r} ({type(err).__name__}: {_short(err)})") from None
    return out


def _binarise(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "uif":
        raise NpzFileError(path, f"{key!r} has dtype {array.dtype}, expected bool, integer or float")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise NpzFileError(path, f"{key!r} has non-finite values (NaN or inf)")
    # 0-255 masks: > 0.5 after scaling by 1/255, i.e. > 127.5, compared without a float copy.
    threshold = 127.5 if array.max() > 1 else 0.5
    return array > threshold


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


# ----------------------------------------------------------------------------------------------
# Importers


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
    return _import_files(
        kind="namo",
        src_dir=src_dir,
        out_dir=out_dir,
        read_file=functools.partial(read_namo_npz, image_size=int(image_size)),
        fields=namo_fields(int(image_size)),
        attrs={
            "image_size": int(image_size),
            "context_channels": list(NAMO_CONTEXT_CHANNELS),
            "mode_grid": NAMO_MODE_GRID,
            "binarise": "bool as is, else >0.5 after /255 when max>1; area resize; on when >=half of a bin is on",
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


def _import_hands(src_dir, out_dir, **options) -> ImportSummary:
    from genflow.data.hands import import_hands_npz  # many poses per file: its own reader and split

    return import_hands_npz(src_dir, out_dir, **options)


IMPORTERS: dict[str, Callable[..., ImportSummary]] = {"namo": import_namo_npz, "hands": _import_hands}


def import_npz(kind: str, src_dir: str | Path, out_dir: str | Path, **options) -> ImportSummary:
    """Imports a directory of ``.npz`` files of one kind (a key of :data:`IMPORTERS`) into shards.

    Raises:
        DataSourceError: Unknown ``kind`` (the message lists the known ones), or what the importer raises.
    """
    importer = IMPORTERS.get(kind)
    if importer is None:
        raise DataSourceError(f"unknown npz kind {kind!r}; expected one of: {', '.join(sorted(IMPORTERS))}")
    return importer(src_dir, out_dir, **options)


# ----------------------------------------------------------------------------------------------
# The shared driver


def _import_files(
    *,
    kind: str,
    src_dir: str | Path,
    out_dir: str | Path,
    read_file: Callable[[Path], dict[str, np.ndarray]],
    fields: dict[str, tuple[tuple[int, ...], str]],
    attrs: dict,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    overwrite: bool,
    limit: int | None,
    workers: int,
    progress: Callable[[int, int], None] | None,
    command: str | None,
    max_shard_bytes: int,
) -> ImportSummary:
    """Finds, splits and converts the files; ``read_file`` turns one file into one sample or raises NpzFileError.

    Split: the files are permuted with the seed; the first ``num_test`` go to test, the next
    ``num_val`` to val. When one of them is skipped, the next file of the permutation takes its place
    (never the last unused file, which is kept for train), so a few bad files do not leave test or
    val empty. The rest, in sorted order, go to train. Test samples are written first, then val, then
    train, each in sorted file order within a chunk.
    """
    src = Path(src_dir)
    out = Path(out_dir)
    check_split_fractions(val_fraction, test_fraction, f"import {kind}")
    if limit is not None and limit < 1:
        raise DataSourceError(f"import {kind}: limit must be >= 1, got {limit}")
    if workers < 0:
        raise DataSourceError(f"import {kind}: workers must be >= 0, got {workers}")
    names = _find_npz(src)
    select_rng, split_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if limit is not None and limit < len(names):
        names = sorted(names[i] for i in select_rng.permutation(len(names))[:limit])
    num_files = len(names)
    order = split_rng.permutation(num_files)
    held_out = {}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        count = max(round(num_files * fraction), 1 if fraction > 0 else 0)
        held_out[split] = min(count, num_files - 1 - sum(held_out.values()))  # train keeps at least one file

    fields = {**fields, "file_index": ((), "int32")}
    file_list = "".join(f"{name}\n" for name in names).encode("utf-8", "surrogateescape")
    source = {"src_dir": str(src.resolve()), "kind": kind}
    if command:
        source["command"] = command
    attrs = {
        **attrs,
        "kind": kind,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "limit": limit,
        "num_files": num_files,
        "file_list": FILE_LIST_NAME,
        "file_list_sha256": hashlib.sha256(file_list).hexdigest(),
        "skipped_report": SKIPPED_REPORT_NAME,
    }
    skipped: list[tuple[str, str]] = []
    counts = {"test": 0, "val": 0, "train": 0}
    done = 0

    with ShardWriter(
        out, fields, max_shard_bytes=max_shard_bytes, seed=seed, source=source, attrs=attrs, overwrite=overwrite
    ) as writer, _Reader(read_file, workers) as reader:
        for split in ("train", "val", "test"):  # registers every split even if one ends up empty
            writer.write(split, **{n: np.empty((0, *shape), dtype) for n, (shape, dtype) in fields.items()})

        def convert(split: str, indices: list[int]) -> None:
            nonlocal done
            for lo in range(0, len(indices), _FILES_PER_CHUNK):
                chunk = indices[lo : lo + _FILES_PER_CHUNK]
                samples = []
                for index, result in zip(chunk, reader.map([src / names[i] for i in chunk]), strict=True):
                    if isinstance(result, str):
                        skipped.append((names[index], result))
                    else:
                        result["file_index"] = np.array(index, np.int32)
                        samples.append(result)
                if samples:
                    writer.write(split, **{n: np.stack([s[n] for s in samples]) for n in fields})
                    counts[split] += len(samples)
                done += len(chunk)
                if progress is not None:
                    progress(done, num_files)

        used = 0
        for split, wanted in held_out.items():
            while counts[split] < wanted:
                take = min(wanted - counts[split], num_files - used - 1)
                if take <= 0:
                    break
                convert(split, sorted(order[used : used + take].tolist()))
                used += take
        convert("train", sorted(order[used:].tolist()))

        converted = sum(counts.values())
        if converted == 0:
            first = "; ".join(f"{name}: {reason}" for name, reason in sorted(skipped)[:_REASONS_IN_ERROR])
            raise DataSourceError(f"{src}: none of the {num_files} .npz files could be converted; first problems: {first}")
        skipped.sort()
        # Written before the manifest (on leaving the block): a dataset with a manifest always has both.
        (out / FILE_LIST_NAME).write_bytes(file_list)
        report = "".join(f"{name}\t{reason}\n" for name, reason in skipped)
        (out / SKIPPED_REPORT_NAME).write_bytes(report.encode("utf-8", "surrogateescape"))
    return ImportSummary(
        converted=converted,
        skipped=skipped,
        out_dir=out,
        splits=dict(counts),
        skipped_report=out / SKIPPED_REPORT_NAME,
        num_files=num_files,
        manifest=writer.close(),
    )


def _find_npz(src: Path) -> list[str]:
    """Sorted names (POSIX, relative to ``src``) of the ``*.npz`` files under ``src``, recursively."""
    if not src.is_dir():
        what = "is not a directory" if src.exists() else "does not exist"
        raise DataSourceError(f"{src}: {what}; expected a directory of .npz files")
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.npz") if p.is_file())
    bad = [name for name in names if "\n" in name or "\r" in name]
    if bad:  # files.txt holds one name per line
        raise DataSourceError(f"{src / bad[0]}: file name contains a line break; rename it")
    if not names:
        raise DataSourceError(f"{src}: no .npz files found (searched recursively)")
    return names


def _read_or_reason(read_file: Callable[[Path], dict[str, np.ndarray]], path: Path) -> dict[str, np.ndarray] | str:
    try:
        return read_file(path)
    except NpzFileError as err:
        return err.reason


class _Reader:
    """Maps ``read_file`` over a list of paths, in this process or a pool; results keep the input order."""

    def __init__(self, read_file: Callable[[Path], dict[str, np.ndarray]], workers: int) -> None:
        self._read = functools.partial(_read_or_reason, read_file)
        self._workers = workers
        # spawn, not fork: the parent may run threads (a progress bar) and torch's thread pools.
        # An executor, not multiprocessing.Pool: a worker that dies raises instead of hanging.
        self._pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 0 else None
        )

    def map(self, paths: list[Path]) -> list[dict[str, np.ndarray] | str]:
        if self._pool is None:
            return [self._read(path) for path in paths]
        chunksize = max(1, len(paths) // (4 * self._workers))
        try:
            return list(self._pool.map(self._read, paths, chunksize=chunksize))
        except BrokenProcessPool as err:
            raise DataSourceError(
                f"a worker process reading .npz files died ({_short(err)}); retry with workers=0"
            ) from None

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__

