"""Directories of one-sample-per-file ``.npz`` archives -> HDF5 shards, the shared driver.

Some source systems store one ``.npz`` per sample. Reading 100k small zip archives per epoch is slow
and fragile, so they are converted once into shards (:mod:`genflow.data.shards`). A recipe's importer
supplies a reader (one file -> one sample's fields) and registers itself as a `genflow data import`
command (entry-point group ``genflow.data_importers``); this module finds the files, splits them,
skips bad ones (counted and named) and writes the shards.

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
from typing import Annotated, Any

import numpy as np

from genflow.config import NonNegativeInt, PositiveInt, Range
from genflow.data.registry import check_data_options
from genflow.errors import DataSourceError


__all__ = ["ImportSummary", "NpzFileError", "NpzImportOptions", "import_npz_files", "import_result", "load_npz_arrays",
           "FILE_LIST_NAME", "SKIPPED_REPORT_NAME"]

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



@dataclass
class NpzImportOptions:
    """`genflow data import KIND SOURCE key=value`: what every directory-of-npz importer takes."""

    out: str | None = None  # output dataset directory (default datasets/<kind>)
    val_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of files for the val split (held out of train; best checkpoints are chosen on it)
    test_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of files for the test split
    seed: NonNegativeInt = 42  # seed of the split
    limit: PositiveInt | None = None  # convert at most this many files
    workers: NonNegativeInt = 0  # reader processes (0: this one)
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        check_data_options(self)


def import_result(summary: ImportSummary) -> dict[str, Any]:
    """What `genflow data import` prints of an import: the dataset, counts, and the first skipped files by name."""
    result: dict[str, Any] = {"dataset": summary.out_dir,
                              "converted": f"{summary.converted} of {summary.num_files} files; skipped {len(summary.skipped)}",
                              "samples": ", ".join(f"{split} {count}" for split, count in summary.splits.items())}
    for name, reason in summary.skipped[:10]:
        result[f"skipped {name}"] = reason
    if len(summary.skipped) > 10:
        result["more skipped"] = f"{len(summary.skipped) - 10} more, all listed in {summary.skipped_report}"
    return result


def load_npz_arrays(path: Path, wanted: list[tuple[str, str, str | None, bool]]) -> dict[str, np.ndarray]:
    """The arrays of one ``.npz`` file by canonical name; NpzFileError (naming the key) when it cannot be read.

    ``wanted``: ``(name, key, legacy key or None, required)`` per array; a missing optional array is
    left out of the result. Pickled (object) arrays are refused."""
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
        for name, key, legacy, required in wanted:
            found = key if key in keys else legacy if legacy in keys else None
            if found is None:
                if not required:
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



# ----------------------------------------------------------------------------------------------
# The shared driver


def import_npz_files(
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
    """Converts every ``.npz`` under ``src_dir`` (one sample each) into shards with splits train / val / test.

    ``read_file`` turns one file into one sample's ``fields`` or raises NpzFileError (the file is then
    skipped, counted and named in ``skipped.txt``); ``attrs`` go into the manifest. A recipe's importer
    supplies these two and its options (see ``genflow_recipes.namo.importer``).

    Split: the files are permuted with the seed; the first ``num_test`` go to test, the next
    ``num_val`` to val. When one of them is skipped, the next file of the permutation takes its place
    (never the last unused file, which is kept for train), so a few bad files do not leave test or
    val empty. The rest, in sorted order, go to train. Test samples are written first, then val, then
    train, each in sorted file order within a chunk.
    """
    src = Path(src_dir)
    out = Path(out_dir)
    from genflow.data.shards import ShardWriter, check_split_fractions  # torch: only when an import runs

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

