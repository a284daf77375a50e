"""HDF5 shard datasets: the on-disk format every recipe trains from.

A dataset is a directory holding ``manifest.json`` and HDF5 shard files ``<split>-00000.h5``, ...
Each shard holds one HDF5 dataset per *field* (e.g. ``points`` ``(n, 500, 2)`` float32, ``label``
``(n,)`` int64), chunked along the sample axis and uncompressed by default so that reads are plain
copies. Shards have a bounded size, so a split of millions of samples never has to fit in memory.

The manifest is written last (atomically), so a directory with shards but no manifest is an
interrupted write, never a silently truncated dataset. It lists every shard with its sample count,
byte size and sha256, which is what :func:`verify_shards` checks.

Readers:

- :class:`ShardDataset`: map-style, random access (shuffling samplers, DDP samplers, eval).
- :class:`StreamingShardDataset`: iterable, reads shards sequentially in blocks; for data on slow
  disks or larger than the page cache.
- :func:`load_split`: a whole split as numpy arrays (small data, evaluation).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from genflow import __version__
from genflow.errors import ShardError

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "ShardWriter",
    "read_manifest",
    "verify_shards",
    "dataset_info",
    "load_split",
    "split_indices",
    "check_split_fractions",
    "first_samples",
    "ShardDataset",
    "StreamingShardDataset",
    "training_split",
]

FORMAT = "genflow-shards/1"
MANIFEST_NAME = "manifest.json"
# {shard file: {bytes, mtime_ns, sha256}} of shards whose sha256 was checked against the manifest: a
# reader re-hashes a shard only when its size or mtime changed (big data is not re-hashed every run)
VERIFIED_NAME = ".verified.json"

# Aim for HDF5 chunks of this many bytes per field: big enough that a sequential read is a few
# large copies, small enough that a partial read of a chunk stays cheap.
_TARGET_CHUNK_BYTES = 256 * 2**10
# StreamingShardDataset reads this many bytes of samples per h5py call.
_STREAM_BLOCK_BYTES = 2**20
# Fields whose whole column in a shard is at most this big (labels, indices) are read once per shard
# and process and then served from memory: one h5py call costs ~5 us whatever its size, as much as
# reading a sample's points.
_SMALL_FIELD_BYTES = 4 * 2**20
_SHARD_FILE_RE = re.compile(r"^.+-\d{5}\.h5$")
_SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------------------------
# Writing


class ShardWriter:
    """Writes samples into bounded-size HDF5 shards and a manifest.

    Example::

        fields = {"points": ((500, 2), "float32"), "label": ((), "int64")}
        with ShardWriter("datasets/digit4", fields, seed=42) as writer:
            writer.write("train", points=points, label=labels)   # points (B, 500, 2), labels (B,)
        # manifest.json is written when the block exits without an exception

    Args:
        out_dir: Dataset directory (created if missing).
        fields: Field name -> (per-sample shape, numpy dtype string), e.g. ``{"label": ((), "int64")}``.
        max_shard_bytes: Upper bound on the sample bytes in one shard file; a write that would exceed
            it is split and continues in the next shard.
        seed: Seed that generated the data, recorded in the manifest.
        source: Where the data came from (JSON-serialisable), recorded in the manifest. An optional
            ``"command"`` entry (e.g. ``"genflow data make-digit4"``) is quoted in error messages
            that tell the user how to re-create a damaged dataset.
        attrs: Anything else worth recording (JSON-serialisable), e.g. generation parameters.
        overwrite: Replace an existing dataset in ``out_dir`` (its manifest and shards are deleted
            first). Without it, a directory holding a manifest or shards is refused.
        compression: Optional h5py compression filter (``"gzip"``, ``"lzf"``). Off by default:
            uncompressed shards are read with plain copies, which is what the training loop wants.
    """

    def __init__(
        self,
        out_dir: str | Path,
        fields: dict[str, tuple[tuple[int, ...], str]],
        *,
        max_shard_bytes: int = 256 * 2**20,
        seed: int | None = None,
        source: dict | None = None,
        attrs: dict | None = None,
        overwrite: bool = False,
        compression: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.fields = _normalise_fields(fields)
        if max_shard_bytes <= 0:
            raise ShardError(f"{self.out_dir}: max_shard_bytes must be positive, got {max_shard_bytes}")
        self.max_shard_bytes = int(max_shard_bytes)
        self.compression = compression
        self._meta = {"seed": seed, "source": source or {}, "attrs": attrs or {}}
        try:  # fail now, not after hours of writing, if the metadata cannot go into JSON
            json.dumps(self._meta, default=_json_default)
        except TypeError as err:
            raise ShardError(f"{self.out_dir}: seed/source/attrs must be JSON-serialisable ({err})") from None

        self.sample_bytes = sum(_sample_bytes(shape, dtype) for shape, dtype in self.fields.values())
        self.samples_per_shard = max(1, self.max_shard_bytes // max(1, self.sample_bytes))
        self._splits: dict[str, _SplitWriter] = {}
        self._written_files: list[Path] = []
        self._manifest: dict | None = None
        self._prepare_directory(overwrite)

    # -- public API ------------------------------------------------------------------------------

    def write(self, split: str, **arrays: np.ndarray) -> None:
        """Appends a batch of samples to ``split``.

        Args:
            split: Split name, e.g. ``"train"`` (letters, digits, ``_ . -``).
            **arrays: One array per field, all with the same leading batch size B, each of shape
                ``(B, *field_shape)`` and exactly the field's dtype. B may be 0 (registers the split).
        """
        if self._manifest is not None:
            raise ShardError(f"{self.out_dir}: write() after close(); the dataset is already finished")
        if not _SPLIT_NAME_RE.match(split):
            raise ShardError(f"{self.out_dir}: invalid split name {split!r} (use letters, digits, '_', '.', '-')")
        batch = self._check_batch(split, arrays)
        writer = self._splits.get(split)
        if writer is None:
            writer = self._splits[split] = _SplitWriter(self, split)
        writer.append(batch)

    def close(self) -> dict:
        """Closes all shards, checksums them and writes ``manifest.json`` atomically.

        Returns:
            The manifest (as written).
        """
        if self._manifest is not None:
            return self._manifest
        for writer in self._splits.values():
            writer.finish_shard()
        manifest = {
            "format": FORMAT,
            "fields": {
                name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in self.fields.items()
            },
            "splits": {
                split: {"count": writer.count, "shards": writer.records} for split, writer in self._splits.items()
            },
            "seed": self._meta["seed"],
            "source": self._meta["source"],
            "attrs": self._meta["attrs"],
            "compression": self.compression,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "genflow_version": __version__,
        }
        text = json.dumps(manifest, indent=2, default=_json_default)
        tmp = self.out_dir / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
        tmp.write_text(text + "\n")
        os.replace(tmp, self.out_dir / MANIFEST_NAME)  # atomic: readers see no manifest or a whole one
        self._manifest = json.loads(text)
        _remember_verified(self.out_dir, [shard for info in self._manifest["splits"].values() for shard in info["shards"]])
        return self._manifest

    def abort(self) -> None:
        """Closes open shards and deletes every shard written so far; no manifest is written."""
        for writer in self._splits.values():
            writer.close_file()
        for file in self._written_files:
            file.unlink(missing_ok=True)
        self._splits.clear()
        self._written_files.clear()
        for directory in getattr(self, "_created_dirs", []):  # innermost first; stops at one that holds other files
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals -------------------------------------------------------------------------------

    def _prepare_directory(self, overwrite: bool) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ShardError(f"{self.out_dir}: exists and is not a directory")
        # the directories this write creates: a failed write removes them again (no empty output left)
        self._created_dirs = [d for d in (self.out_dir, *self.out_dir.parents) if not d.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocking = next((d for d in self.out_dir.parents if d.exists() and not d.is_dir()), self.out_dir)
            raise ShardError(f"{self.out_dir}: cannot create the output directory: {blocking} is a file") from None
        manifest_path = self.out_dir / MANIFEST_NAME
        old_shards = [p for p in self.out_dir.iterdir() if _SHARD_FILE_RE.match(p.name)]
        if not manifest_path.exists() and not old_shards:
            return
        if not overwrite:
            what = "a dataset (manifest.json)" if manifest_path.exists() else "shards of an unfinished write"
            raise ShardError(f"{self.out_dir}: already holds {what}; pass overwrite=True (--overwrite) to replace it")
        # Manifest first: if we die half-way, the directory reads as unfinished rather than as a
        # dataset whose shards are missing.
        manifest_path.unlink(missing_ok=True)
        (self.out_dir / VERIFIED_NAME).unlink(missing_ok=True)
        for shard in old_shards:
            shard.unlink()

    def _check_batch(self, split: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = sorted(set(self.fields) - set(arrays))
        unknown = sorted(set(arrays) - set(self.fields))
        if missing or unknown:
            raise ShardError(
                f"{self.out_dir}: write({split!r}) got fields {sorted(arrays)}, expected {sorted(self.fields)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {unknown})" if unknown else "")
            )
        batch_sizes = set()
        checked = {}
        for name, (shape, dtype) in self.fields.items():
            array = np.asarray(arrays[name])
            if array.dtype != np.dtype(dtype):
                raise ShardError(
                    f"{self.out_dir}: field {name!r} has dtype {array.dtype}, expected {dtype} "
                    f"(convert with .astype(np.{dtype}))"
                )
            if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
                raise ShardError(
                    f"{self.out_dir}: field {name!r} has shape {tuple(array.shape)}, expected (B, {_fmt_shape(shape)})"
                )
            batch_sizes.add(array.shape[0])
            checked[name] = array
        if len(batch_sizes) > 1:
            sizes = {name: a.shape[0] for name, a in checked.items()}
            raise ShardError(f"{self.out_dir}: write({split!r}) fields have different batch sizes {sizes}")
        return checked


class _SplitWriter:
    """The shards of one split: the open shard file and the records of the finished ones."""

    def __init__(self, owner: ShardWriter, split: str) -> None:
        self.owner = owner
        self.split = split
        self.count = 0
        self.records: list[dict] = []
        self._file: h5py.File | None = None
        self._path: Path | None = None
        self._in_shard = 0

    def append(self, batch: dict[str, np.ndarray]) -> None:
        total = next(iter(batch.values())).shape[0]
        done = 0
        while done < total:
            if self._file is None or self._in_shard == self.owner.samples_per_shard:
                self.finish_shard()
                self._open_shard()
            take = min(total - done, self.owner.samples_per_shard - self._in_shard)
            for name, array in batch.items():
                dset = self._file[name]
                dset.resize(self._in_shard + take, axis=0)
                dset[self._in_shard : self._in_shard + take] = array[done : done + take]
            self._in_shard += take
            self.count += take
            done += take

    def _open_shard(self) -> None:
        owner = self.owner
        self._path = owner.out_dir / f"{self.split}-{len(self.records):05d}.h5"
        owner._written_files.append(self._path)
        self._file = h5py.File(self._path, "w")
        self._in_shard = 0
        for name, (shape, dtype) in owner.fields.items():
            row_bytes = max(1, _sample_bytes(shape, dtype))
            chunk_rows = int(min(owner.samples_per_shard, max(1, _TARGET_CHUNK_BYTES // row_bytes)))
            self._file.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(chunk_rows, *shape),
                compression=owner.compression,
            )

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish_shard(self) -> None:
        """Closes the open shard (if any) and records its count, size and checksum."""
        if self._file is None:
            return
        self.close_file()
        # Hash right after closing, while the file is still in the page cache.
        self.records.append(
            {
                "file": self._path.name,
                "count": self._in_shard,
                "sha256": _sha256(self._path),
                "bytes": self._path.stat().st_size,
            }
        )


# ----------------------------------------------------------------------------------------------
# Manifest, verification, summaries


def read_manifest(path: str | Path) -> dict:
    """Reads and validates a dataset's manifest.

    Args:
        path: The dataset directory, or its ``manifest.json``.

    Returns:
        The manifest dict (keys ``format, fields, splits, seed, source, attrs, created, ...``).

    Raises:
        ShardError: The directory or manifest is missing, not JSON, or not a genflow shard manifest.
    """
    root = _dataset_dir(path)
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ShardError(
            f"{root}: no such dataset directory; create it first with the recipe's `genflow data make-...` command"
        )
    if not manifest_path.is_file():
        shards = [p.name for p in root.iterdir() if _SHARD_FILE_RE.match(p.name)]
        why = "the write was interrupted (shards but no manifest)" if shards else "this is not a genflow dataset"
        raise ShardError(f"{manifest_path}: missing; {why}; re-create the dataset")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ShardError(f"{manifest_path}: cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise ShardError(f"{manifest_path}: invalid JSON ({err}); re-create the dataset") from None
    _validate_manifest(manifest, manifest_path)
    return manifest


def verify_shards(path: str | Path) -> list[str]:
    """Checks every shard of a dataset against its manifest.

    Reads every byte (sha256), so it takes about as long as one pass over the data.

    Args:
        path: The dataset directory, or its ``manifest.json``.

    Returns:
        One line per problem (missing file, size or sha256 mismatch, unreadable HDF5, missing field,
        wrong shape/dtype, count mismatch); an empty list means the dataset is intact.

    Raises:
        ShardError: Only when the manifest itself is missing or unusable.
    """
    root = _dataset_dir(path)
    manifest = read_manifest(root)
    fields = _manifest_fields(manifest)
    problems: list[str] = []
    for split, info in manifest["splits"].items():
        listed = sum(shard["count"] for shard in info["shards"])
        if listed != info["count"]:
            problems.append(
                f"{root / MANIFEST_NAME}: split {split!r} count is {info['count']}, its shards hold {listed}"
            )
        for shard in info["shards"]:
            file = root / shard["file"]
            if not file.is_file():
                problems.append(f"{file}: missing")
                continue
            size = file.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{file}: {size} bytes, manifest says {shard['bytes']} (truncated or replaced)")
            else:
                digest = _sha256(file)
                if digest != shard["sha256"]:
                    problems.append(
                        f"{file}: sha256 mismatch (manifest says {shard['sha256'][:12]}..., file is {digest[:12]}...)"
                    )
            try:
                with h5py.File(file, "r") as handle:
                    problems.extend(_layout_problems(handle, file, fields, shard["count"]))
            except OSError as err:
                problems.append(f"{file}: not a readable HDF5 file ({_short(err)})")
    return problems


def dataset_info(path: str | Path) -> dict:
    """Summarises a dataset for ``genflow data info`` (reads only the manifest).

    Returns:
        ``{"path", "format", "created", "genflow_version", "seed", "source", "attrs", "fields":
        {name: {"shape", "dtype"}}, "splits": {split: {"count", "shards", "bytes"}}, "num_samples",
        "total_bytes"}``.
    """
    root = _dataset_dir(path)
    manifest = read_manifest(root)
    splits = {
        split: {
            "count": info["count"],
            "shards": len(info["shards"]),
            "bytes": sum(shard["bytes"] for shard in info["shards"]),
        }
        for split, info in manifest["splits"].items()
    }
    return {
        "path": str(root),
        "format": manifest["format"],
        "created": manifest.get("created"),
        "genflow_version": manifest.get("genflow_version"),
        "seed": manifest.get("seed"),
        "source": manifest.get("source", {}),
        "attrs": manifest.get("attrs", {}),
        "fields": manifest["fields"],
        "splits": splits,
        "num_samples": sum(s["count"] for s in splits.values()),
        "total_bytes": sum(s["bytes"] for s in splits.values()),
    }


def load_split(path: str | Path, split: str, fields: list[str] | None = None) -> dict[str, np.ndarray]:
    """Loads a whole split into memory.

    Args:
        path: The dataset directory, or its ``manifest.json``.
        split: Split name, e.g. ``"test"``.
        fields: Fields to load (default: all).

    Returns:
        Field name -> array of shape ``(count, *field_shape)``.

    Raises:
        ShardError: Unknown split or field (the message lists the available ones), or a shard that
            is missing or corrupt.
    """
    reader = _SplitReader(path, split, fields)
    out = {name: np.empty((reader.count, *reader.shapes[name]), reader.dtypes[name]) for name in reader.fields}
    for shard_id, start in enumerate(reader.starts[:-1]):
        count = reader.counts[shard_id]
        if count == 0:
            continue
        for name in reader.fields:
            reader.read(shard_id, name, slice(0, count), out=out[name][start : start + count])
    reader.close()
    return out


# ----------------------------------------------------------------------------------------------
# Reading


def check_split_fractions(val_fraction: float, test_fraction: float, what: str = "split") -> None:
    """Raise one clear line unless both fractions are in [0, 1) and together below 1 (train keeps data)."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ShardError(f"{what}: val_fraction={val_fraction} and test_fraction={test_fraction}: expected each in "
                         "[0, 1) and together below 1")


def split_indices(order: np.ndarray, *, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Train / val / test parts of an already shuffled (seeded) index array.

    The first ``test_fraction`` is test and the next ``val_fraction`` is val, held out of the
    training data; the rest is train. Taking test first keeps the test set of a dataset made before it
    had a val split. Each part keeps the order of ``order``.

    Raises:
        ShardError: fractions outside [0, 1) or summing to 1 or more.
    """
    check_split_fractions(val_fraction, test_fraction)
    num_test = round(len(order) * test_fraction)
    num_val = round(len(order) * val_fraction)
    return {"train": order[num_test + num_val:], "val": order[num_test:num_test + num_val], "test": order[:num_test]}


def first_samples(dataset: Dataset, n: int | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` samples (all when None) of a dataset of dicts of tensors, as stacked numpy arrays.

    Recipes use it to score the validation data the engine hands them. Reads a
    :class:`ShardDataset` (or a ``Subset`` of one) in one batch.
    """
    count = len(dataset) if n is None else min(n, len(dataset))
    indices = list(range(count))
    base = dataset
    if isinstance(dataset, torch.utils.data.Subset):
        base, indices = dataset.dataset, [int(dataset.indices[i]) for i in indices]
    if hasattr(base, "get_batch"):
        batch = base.get_batch(indices) if indices else None
    else:
        items = [base[i] for i in indices]
        batch = {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]} if items else None
    if batch is None:
        raise ShardError("first_samples: the dataset is empty")
    return {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in batch.items()}


class _SplitReader:
    """The shards of one split, opened lazily and once per process.

    h5py handles must not cross a fork or be pickled, so they are keyed by the process id and
    dropped when the object is pickled (DataLoader workers re-open the files on first use).
    """

    def __init__(self, path: str | Path, split: str, fields: list[str] | None) -> None:
        self.root = _dataset_dir(path)
        self.manifest = read_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            if split == "val":  # made before genflow held validation out of the training data
                raise ShardError(f"{self.root}: no 'val' split (the dataset predates validation splits; best "
                                 f"checkpoints are chosen on val, never on test): {_recreate_hint(self.manifest)}")
            raise ShardError(f"{self.root}: no split {split!r}; available splits: {sorted(splits)}")
        known = _manifest_fields(self.manifest)
        fields = list(known) if fields is None else list(fields)
        unknown = [name for name in fields if name not in known]
        if unknown or not fields:
            raise ShardError(f"{self.root}: unknown fields {unknown or fields}; available fields: {list(known)}")
        self.split = split
        self.fields = fields
        self.shapes = {name: known[name][0] for name in fields}
        self.dtypes = {name: np.dtype(known[name][1]) for name in fields}
        self.all_fields = known
        shards = splits[split]["shards"]
        self.files = [self.root / shard["file"] for shard in shards]
        self.counts = [int(shard["count"]) for shard in shards]
        self.starts = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64)
        self.count = int(self.starts[-1])
        # Uncompressed chunks are read straight into our buffers when HDF5's chunk cache is off,
        # which makes random single-sample reads ~3x faster; compressed chunks need the cache.
        self.chunk_cache_bytes = 0 if not self.manifest.get("compression") else 16 * 2**20
        largest_shard = max(self.counts, default=0)
        self.small_fields = {
            name
            for name in fields
            if largest_shard * _sample_bytes(self.shapes[name], self.dtypes[name].str) <= _SMALL_FIELD_BYTES
        }
        self._check_files(shards)
        self._columns: dict[tuple[int, str], np.ndarray] = {}
        self._handles: dict[int, dict[str, h5py.Dataset]] = {}
        self._files: dict[int, h5py.File] = {}
        self._pid: int | None = None

    def _check_files(self, shards: list[dict]) -> None:
        """Up-front check in the constructing process: stat, HDF5 header and layout, then each shard's
        sha256 against the manifest (hashed once, then cached by size and mtime: `check_shard_hashes`).

        A shard that is missing, truncated, not HDF5 or changed fails here, as one clear line, rather
        than inside a DataLoader worker, whose errors reach the user wrapped in a worker traceback.
        """
        for shard_id, (file, shard) in enumerate(zip(self.files, shards, strict=True)):
            if not file.is_file():
                raise ShardError(
                    f"{file}: missing (listed in {self.root / MANIFEST_NAME}); {_recreate_hint(self.manifest)}"
                )
            size = file.stat().st_size
            if size != shard["bytes"]:
                raise ShardError(
                    f"{file}: {size} bytes, manifest says {shard['bytes']}; the shard is truncated or replaced, "
                    f"{_recreate_hint(self.manifest)}"
                )
            self._open(shard_id).close()  # only the check: handles are opened lazily, per process
        check_shard_hashes(self.root, shards)

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global sample indices (already in range) -> (shard ids, indices within the shard)."""
        shard_ids = np.searchsorted(self.starts, indices, side="right") - 1
        return shard_ids, indices - self.starts[shard_ids]

    def dataset(self, shard_id: int, name: str) -> h5py.Dataset:
        if self._pid != os.getpid():
            self._handles, self._files, self._pid = {}, {}, os.getpid()
        handles = self._handles.get(shard_id)
        if handles is None:
            handle = self._files[shard_id] = self._open(shard_id)
            handles = self._handles[shard_id] = {field: handle[field] for field in self.fields}
        return handles[name]

    def _open(self, shard_id: int) -> h5py.File:
        """Opens one shard and checks its layout against the manifest."""
        file = self.files[shard_id]
        try:
            handle = h5py.File(file, "r", rdcc_nbytes=self.chunk_cache_bytes)
        except OSError as err:
            raise ShardError(
                f"{file}: not a readable HDF5 file ({_short(err)}); the shard is corrupt, "
                f"{_recreate_hint(self.manifest)}"
            ) from None
        problems = _layout_problems(handle, file, self.all_fields, self.counts[shard_id])
        if problems:
            handle.close()
            raise ShardError(f"{problems[0]}; {_recreate_hint(self.manifest)}")
        return handle

    def read(self, shard_id: int, name: str, selection: int | slice, out: np.ndarray | None = None) -> np.ndarray:
        """Reads ``dataset[selection]`` of one shard, turning HDF5 errors into a ShardError."""
        try:
            dset = self.dataset(shard_id, name)
            if out is None:
                return dset[selection]
            dset.read_direct(out, source_sel=np.s_[selection])
            return out
        except (OSError, RuntimeError, ValueError) as err:
            raise ShardError(
                f"{self.files[shard_id]}: cannot read field {name!r} ({_short(err)}); the shard is corrupt, "
                f"{_recreate_hint(self.manifest)}"
            ) from None

    def column(self, shard_id: int, name: str) -> np.ndarray:
        """The whole of a small field in one shard, read once per process."""
        column = self._columns.get((shard_id, name))
        if column is None:
            column = self._columns[(shard_id, name)] = self.read(shard_id, name, slice(0, self.counts[shard_id]))
        return column

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._handles, self._files, self._pid = {}, {}, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_handles={}, _files={}, _pid=None, _columns={})  # open h5py files must never be pickled
        return state


class ShardDataset(Dataset):
    """Map-style dataset over one split of a shard directory.

    Works with DataLoader workers: shard files are opened lazily in each process, never pickled open.
    ``__getitems__`` (called by DataLoader for a whole batch) groups the indices by shard, reads
    contiguous runs in one h5py call each and restores the requested order.

    Args:
        path: The dataset directory, or its ``manifest.json``.
        split: Split name, e.g. ``"train"``.
        fields: Fields to return (default: all).
        in_memory: Load the split into RAM at construction (fast for data that fits).

    Each sample is ``{field: tensor of shape field_shape}``; ``default_collate`` turns a batch into
    ``{field: (B, *field_shape)}``, e.g. ``points`` ``(B, 500, 2)`` and ``label`` ``(B,)``.
    """

    def __init__(
        self, path: str | Path, split: str, fields: list[str] | None = None, in_memory: bool = False
    ) -> None:
        self._reader = _SplitReader(path, split, fields)
        self.path = self._reader.root
        self.split = split
        self.fields: list[str] = self._reader.fields
        self.manifest: dict = self._reader.manifest
        self._arrays = load_split(self.path, split, self.fields) if in_memory else None

    def __len__(self) -> int:
        return self._reader.count

    def field_shape(self, name: str) -> tuple[int, ...]:
        """Per-sample shape of a field, e.g. ``(500, 2)`` for ``points`` and ``()`` for ``label``."""
        if name not in self._reader.shapes:
            raise ShardError(f"{self.path}: unknown field {name!r}; this dataset returns {self.fields}")
        return self._reader.shapes[name]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self._check_indices(np.asarray([index], dtype=np.int64))[0]
        if self._arrays is not None:
            return {name: torch.from_numpy(np.array(self._arrays[name][i])) for name in self.fields}
        shard_ids, local = self._reader.locate(np.asarray([i]))
        shard, row = int(shard_ids[0]), int(local[0])
        reader = self._reader
        return {
            name: torch.from_numpy(
                np.array(reader.column(shard, name)[row])
                if name in reader.small_fields
                else np.asarray(reader.read(shard, name, row))
            )
            for name in self.fields
        }

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """Reads a batch of samples; returns them as a list (what ``default_collate`` expects)."""
        batch = self.get_batch(indices)
        return [{name: batch[name][j] for name in self.fields} for j in range(len(indices))]

    def get_batch(self, indices: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Reads samples into batched tensors ``{field: (B, *field_shape)}``, in the order given."""
        idx = self._check_indices(np.asarray(indices, dtype=np.int64).reshape(-1))
        if self._arrays is not None:
            return {name: torch.from_numpy(self._arrays[name][idx]) for name in self.fields}
        reader = self._reader
        out = {name: np.empty((len(idx), *reader.shapes[name]), reader.dtypes[name]) for name in self.fields}
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        shard_ids, local = reader.locate(sorted_idx)
        small = [name for name in self.fields if name in reader.small_fields]
        large = [name for name in self.fields if name not in reader.small_fields]
        if small:
            for shard in np.unique(shard_ids).tolist():
                in_shard = shard_ids == shard
                for name in small:
                    out[name][order[in_shard]] = reader.column(shard, name)[local[in_shard]]
        # A run is a stretch of consecutive indices inside one shard: one h5py call reads it all.
        new_run = np.ones(len(idx), dtype=bool)
        new_run[1:] = (np.diff(sorted_idx) != 1) | (np.diff(shard_ids) != 0)
        bounds = np.append(np.flatnonzero(new_run), len(idx))
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            shard, start = int(shard_ids[a]), int(local[a])
            for name in large:
                if b - a == 1:  # integer indexing takes h5py's fast path
                    out[name][order[a]] = reader.read(shard, name, start)
                else:
                    out[name][order[a:b]] = reader.read(shard, name, slice(start, start + b - a))
        return {name: torch.from_numpy(array) for name, array in out.items()}

    def _check_indices(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise IndexError(f"index {bad} out of range for {self.path} split {self.split!r} of {n} samples")
        return idx


class StreamingShardDataset(IterableDataset):
    """Streams one split of a shard directory, reading each shard sequentially in blocks.

    Work division (each sample is seen exactly once per epoch across all processes): the shards are
    put in one order (shuffled with ``seed + epoch`` when ``shuffle``), their samples concatenated,
    and that sequence cut into ``world_size * num_workers`` contiguous ranges of near-equal length
    (they differ by at most one sample), consumer ``rank * num_workers + worker_id`` taking range
    number ``consumer``. With many shards a consumer reads a few whole shards; with fewer shards
    than consumers the ranges fall inside shards, so no consumer is idle or duplicates data, and
    every rank gets the same number of samples to within one.

    Shuffling (``shuffle=True``): each consumer reads its range in blocks of about 1 MiB, in a
    shuffled block order, through a shuffle buffer of ``buffer_size`` samples; all seeded by
    ``(seed, epoch, consumer)``. Every rank must use the same ``seed`` and epoch (they agree on the
    shard order). Call :meth:`set_epoch` before iterating each epoch (with ``persistent_workers=True``
    workers keep the epoch they were started with).

    Args:
        path: The dataset directory, or its ``manifest.json``.
        split: Split name.
        fields: Fields to return (default: all).
        shuffle: Shuffle shard order, block order and samples within the buffer.
        seed: Base seed for the shuffles.
        buffer_size: Samples held in the shuffle buffer per consumer.
        rank, world_size: This process's place among the training processes; default from
            ``torch.distributed`` when it is initialised (read at construction, because worker
            processes do not see the process group), else 0 and 1.
    """

    def __init__(
        self,
        path: str | Path,
        split: str,
        fields: list[str] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 4096,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self._reader = _SplitReader(path, split, fields)
        self.path = self._reader.root
        self.split = split
        self.fields: list[str] = self._reader.fields
        self.manifest: dict = self._reader.manifest
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = max(1, int(buffer_size))
        dist_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_ready else 0)
        self.world_size = (
            world_size if world_size is not None else (torch.distributed.get_world_size() if dist_ready else 1)
        )
        if not 0 <= self.rank < self.world_size:
            raise ShardError(f"{self.path}: rank {self.rank} is not in [0, world_size={self.world_size})")
        self.epoch = 0
        self.skip_batches, self.batch_size = 0, 1  # set_position: where the next iteration starts
        sample_bytes = sum(
            _sample_bytes(self._reader.shapes[n], self._reader.dtypes[n].str) for n in self.fields
        )
        self.block_rows = max(1, _STREAM_BLOCK_BYTES // max(1, sample_bytes))

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that seeds the next iteration's shuffles."""
        self.epoch = int(epoch)

    def set_position(self, batches_done: int, batch_size: int) -> None:
        """Start the next iteration after this rank's first `batches_done` batches of `batch_size` (a resume
        mid-epoch). A DataLoader with W workers hands out batch i from worker i % W; each worker skips the
        batches its part had given below `batches_done`, so the rest of the epoch is the same batches, in
        the same order, as in an iteration that was never interrupted."""
        self.skip_batches, self.batch_size = int(batches_done), int(batch_size)

    def batches_per_epoch(self, batch_size: int, num_workers: int) -> int:
        """Full batches of `batch_size` this rank gets per epoch through a DataLoader with `num_workers`
        workers, counting only rounds in which every worker still has a full batch (so the round-robin
        order, and with it `set_position`, holds); the same on every rank."""
        consumers = self.world_size * max(1, num_workers)
        fewest = self._reader.count // consumers  # consumer ranges differ by at most one sample
        return max(1, num_workers) * (fewest // batch_size)

    def field_shape(self, name: str) -> tuple[int, ...]:
        """Per-sample shape of a field, e.g. ``(500, 2)``."""
        if name not in self._reader.shapes:
            raise ShardError(f"{self.path}: unknown field {name!r}; this dataset returns {self.fields}")
        return self._reader.shapes[name]

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all its workers)."""
        total = self._reader.count
        return total * (self.rank + 1) // self.world_size - total * self.rank // self.world_size

    def consumer_ranges(self, consumer: int, num_consumers: int) -> list[tuple[int, int, int]]:
        """The ``(shard_id, start, stop)`` pieces consumer ``consumer`` reads this epoch, in order."""
        counts = self._reader.counts
        order = np.arange(len(counts))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(counts))
        total = self._reader.count
        lo = total * consumer // num_consumers
        hi = total * (consumer + 1) // num_consumers
        pieces = []
        offset = 0
        for shard_id in order.tolist():
            start, stop = max(lo, offset), min(hi, offset + counts[shard_id])
            if start < stop:
                pieces.append((shard_id, start - offset, stop - offset))
            offset += counts[shard_id]
        return pieces

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        # A DataLoader restarts its round-robin at worker 0: after k batches, worker w plays the part that
        # worker (w + k) % W had (the one whose batch comes next), having already given its batches below k.
        part = (worker_id + self.skip_batches) % num_workers
        skip = len(range(part, self.skip_batches, num_workers)) * self.batch_size
        yield from itertools.islice(self._shuffled(self.rank * num_workers + part, num_workers), skip, None)

    def _shuffled(self, consumer: int, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
        pieces = self.consumer_ranges(consumer, self.world_size * num_workers)
        blocks = [
            (shard, start, min(start + self.block_rows, stop))
            for shard, first, stop in pieces
            for start in range(first, stop, self.block_rows)
        ]
        rng = random.Random(int(np.random.SeedSequence([self.seed, self.epoch, consumer]).generate_state(1)[0]))
        if self.shuffle:
            rng.shuffle(blocks)
        samples = self._samples(blocks)
        if not self.shuffle:
            yield from samples
            return
        buffer: list[dict[str, torch.Tensor]] = []
        for sample in samples:
            if len(buffer) < self.buffer_size:
                buffer.append(sample)
                continue
            j = rng.randrange(self.buffer_size)
            yield buffer[j]
            buffer[j] = sample
        rng.shuffle(buffer)
        yield from buffer

    def _samples(self, blocks: list[tuple[int, int, int]]) -> Iterator[dict[str, torch.Tensor]]:
        reader = self._reader
        try:
            for shard, start, stop in blocks:
                block = {name: torch.from_numpy(reader.read(shard, name, slice(start, stop))) for name in self.fields}
                for j in range(stop - start):
                    yield {name: block[name][j] for name in self.fields}
        finally:
            reader.close()


def training_split(path: str | Path, fields: list[str], *, streaming: bool = False, in_memory: bool = False,
                   seed: int = 0) -> ShardDataset | StreamingShardDataset:
    """A recipe's training set: the train split as a map-style `ShardDataset` (in memory when small), or
    with `streaming` (a recipe's `data.streaming: true`) as a `StreamingShardDataset`: each process x
    DataLoader worker reads its own shards sequentially, the engine reshuffles every epoch
    (`set_epoch`) and a resume continues at the exact sample (`set_position`); memory stays flat
    whatever the data size."""
    if streaming:
        return StreamingShardDataset(path, "train", fields, shuffle=True, seed=seed)
    return ShardDataset(path, "train", fields, in_memory=in_memory)


# ----------------------------------------------------------------------------------------------
# Helpers


def _dataset_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.parent if path.name == MANIFEST_NAME else path


def _normalise_fields(fields: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    if not fields:
        raise ShardError("ShardWriter: no fields given; expected e.g. {'points': ((500, 2), 'float32')}")
    out = {}
    for name, spec in fields.items():
        if not _FIELD_NAME_RE.match(name):
            raise ShardError(f"ShardWriter: invalid field name {name!r} (use a Python identifier)")
        try:
            shape, dtype = spec
            shape = tuple(int(d) for d in shape)
            dtype = np.dtype(dtype)
        except (TypeError, ValueError) as err:
            raise ShardError(
                f"ShardWriter: field {name!r} spec {spec!r} is not (shape tuple, dtype string): {err}"
            ) from None
        if any(d <= 0 for d in shape):
            raise ShardError(f"ShardWriter: field {name!r} shape {shape} must have positive dimensions")
        if dtype.hasobject or dtype.kind not in "biufc":
            raise ShardError(f"ShardWriter: field {name!r} dtype {dtype} is not a numeric numpy dtype")
        out[name] = (shape, dtype.name)
    return out


def _validate_manifest(manifest: Any, manifest_path: Path) -> None:
    if not isinstance(manifest, dict):
        raise ShardError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ShardError(
            f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}; re-create the dataset"
        )
    fields, splits = manifest.get("fields"), manifest.get("splits")
    if not isinstance(fields, dict) or not fields or not all(
        isinstance(f, dict) and isinstance(f.get("shape"), list) and isinstance(f.get("dtype"), str)
        for f in fields.values()
    ):
        raise ShardError(f"{manifest_path}: 'fields' must map names to {{shape: [...], dtype: str}}")
    if not isinstance(splits, dict):
        raise ShardError(f"{manifest_path}: 'splits' must map split names to {{count, shards}}")
    shard_keys = {"file", "count", "sha256", "bytes"}
    for split, info in splits.items():
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("count"), int)
            or not isinstance(info.get("shards"), list)
            or not all(isinstance(s, dict) and shard_keys <= set(s) for s in info["shards"])
        ):
            raise ShardError(
                f"{manifest_path}: split {split!r} must be {{count, shards: [{{file, count, sha256, bytes}}]}}"
            )
        for shard in info["shards"]:
            if Path(shard["file"]).name != shard["file"]:  # shards live in the dataset directory, nowhere else
                raise ShardError(f"{manifest_path}: shard file {shard['file']!r} must be a plain file name")


def _manifest_fields(manifest: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(f["shape"]), f["dtype"]) for name, f in manifest["fields"].items()}


def _layout_problems(
    handle: h5py.File, file: Path, fields: dict[str, tuple[tuple[int, ...], str]], count: int
) -> list[str]:
    problems = []
    for name, (shape, dtype) in fields.items():
        if name not in handle:
            problems.append(f"{file}: field {name!r} missing")
            continue
        dset = handle[name]
        if not isinstance(dset, h5py.Dataset):
            problems.append(f"{file}: {name!r} is not an HDF5 dataset")
        elif dset.shape != (count, *shape):
            problems.append(f"{file}: field {name!r} has shape {dset.shape}, expected ({count}, {_fmt_shape(shape)})")
        elif dset.dtype != np.dtype(dtype):
            problems.append(f"{file}: field {name!r} has dtype {dset.dtype}, expected {dtype}")
    return problems


def _recreate_hint(manifest: dict) -> str:
    source = manifest.get("source")
    command = source.get("command") if isinstance(source, dict) else None
    return f"re-create it with {command}" if command else "re-create the dataset"


def check_shard_hashes(root: Path, shards: list[dict]) -> None:
    """ShardError naming the first shard whose bytes no longer match the manifest's sha256 (callers have
    checked that each file exists with the listed size).

    Each shard is hashed once: the result is kept in `root/.verified.json` by size and mtime (the
    writer records the shards it wrote), so only a changed file is read again.
    """
    cache = _read_verified(root)
    checked = []
    for shard in shards:
        file = root / shard["file"]
        stat = file.stat()
        known = cache.get(shard["file"], {})
        if known.get("sha256") == shard["sha256"] and known.get("bytes") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            continue
        if _sha256(file) != shard["sha256"]:
            raise ShardError(f"{file}: sha256 does not match the manifest (the file changed after it was written); "
                             f"re-create the dataset (`genflow data verify {root}` lists every damaged shard)")
        checked.append(shard)
    if checked:
        _remember_verified(root, checked, cache)


def _read_verified(root: Path) -> dict:
    try:
        cache = json.loads((root / VERIFIED_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _remember_verified(root: Path, shards: list[dict], cache: dict | None = None) -> None:
    """Record `shards` (manifest records, checked just now) as verified; a read-only dataset is not cached."""
    cache = dict(_read_verified(root) if cache is None else cache)
    for shard in shards:
        try:
            stat = (root / shard["file"]).stat()
        except OSError:
            continue
        cache[shard["file"]] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard["sha256"]}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{VERIFIED_NAME}.", dir=root)
        with os.fdopen(fd, "w") as handle:
            json.dump(cache, handle)
        os.replace(tmp, root / VERIFIED_NAME)
    except OSError:
        pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sample_bytes(shape: tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _short(err: BaseException) -> str:
    """First line of an exception message; HDF5 errors can span many lines."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
