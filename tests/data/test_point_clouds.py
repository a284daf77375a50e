"""Tests for genflow.data.point_clouds: image -> point cloud sampling and the MNIST shard builder."""

import numpy as np
import pytest

from genflow.data import point_clouds
from genflow.data.point_clouds import images_to_point_clouds, make_mnist_points
from genflow.data.shards import load_split, read_manifest, verify_shards
from genflow.errors import DataSourceError


def fake_mnist_npz(path, n_train=30, n_test=10, seed=0):
    """A tiny MNIST-shaped npz with non-empty images; labels cycle 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    images[:, 10:18, 10:18] = 255  # never all zero
    labels = np.arange(n_train + n_test, dtype=np.int64) % 10
    np.savez(path, x_train=images[:n_train], y_train=labels[:n_train], x_test=images[n_train:], y_test=labels[n_train:])
    return path, images, labels


# -- images_to_point_clouds ---------------------------------------------------------------------


def test_points_lie_in_the_chosen_pixel_with_y_up():
    image = np.zeros((1, 4, 8), np.uint8)
    image[0, 0, 7] = 200  # top-right pixel: row 0, last column
    points = images_to_point_clouds(image, 100, np.random.default_rng(0))
    assert points.shape == (1, 100, 2) and points.dtype == np.float32
    x, y = points[0, :, 0], points[0, :, 1]
    assert np.all((x >= 1 - 2 / 8) & (x <= 1)) and np.all((y > 1 - 2 / 4) & (y <= 1))


def test_pixels_are_picked_in_proportion_to_intensity():
    image = np.zeros((1, 2, 2), np.uint8)
    image[0, 1, 0], image[0, 1, 1] = 50, 150  # bottom row only: left 1/4 of the mass, right 3/4
    points = images_to_point_clouds(image, 20000, np.random.default_rng(1))[0]
    assert np.all(points[:, 1] <= 0)  # bottom row is y in (-1, 0]
    assert abs((points[:, 0] >= 0).mean() - 0.75) < 0.02


def test_point_clouds_are_deterministic_given_the_generator():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    a = images_to_point_clouds(images, 50, np.random.default_rng(9))
    b = images_to_point_clouds(images, 50, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.abs(a) <= 1)


def test_all_zero_image_is_named_by_index():
    images = np.full((3, 28, 28), 7, np.uint8)
    images[2] = 0
    with pytest.raises(DataSourceError, match="image 2 is all zero"):
        images_to_point_clouds(images, 10, np.random.default_rng(0))


class RecordingGenerator:
    """A NumPy generator that keeps every draw it hands out: (method, low, values)."""

    def __init__(self, seed):
        self.rng, self.calls = np.random.default_rng(seed), []

    def integers(self, low, high, size):
        values = self.rng.integers(low, high, size=size)
        self.calls.append(("integers", np.broadcast_to(low, values.shape), values))
        return values

    def random(self, size):
        values = self.rng.random(size)
        self.calls.append(("random", None, values))
        return values


def test_conversion_draws_for_a_block_of_images_at_once_and_matches_a_per_image_lookup(monkeypatch):
    # What makes a digit class (7000 images) fast: the pixels of a whole block of images are drawn in one
    # call, not image by image, and the blocks bound the temporary memory. Each image's points must be
    # exactly those of a plain per-image inverse-CDF lookup of the same draws.
    monkeypatch.setattr(point_clouds, "_IMAGES_PER_STEP", 4)
    images = np.random.default_rng(0).integers(0, 4, size=(10, 5, 6), dtype=np.uint8)  # many zero pixels
    images[:, 0, 0] = 1  # none all zero
    rng = RecordingGenerator(3)
    points = images_to_point_clouds(images, 7, rng)
    assert [(name, values.shape) for name, _, values in rng.calls] == [
        ("integers", (4, 7)), ("random", (4, 7, 2)), ("integers", (4, 7)), ("random", (4, 7, 2)),
        ("integers", (2, 7)), ("random", (2, 7, 2))]
    lows = np.concatenate([low for name, low, _ in rng.calls if name == "integers"])
    draws = np.concatenate([values for name, _, values in rng.calls if name == "integers"])
    jitter = np.concatenate([values for name, _, values in rng.calls if name == "random"])
    for i, image in enumerate(images):
        flat = image.ravel().astype(np.int64)
        pixels = np.searchsorted(np.cumsum(flat), draws[i] - lows[i], side="right")  # within this image alone
        assert (flat[pixels] > 0).all()
        rows, cols = np.divmod(pixels, 6)
        expected = np.stack([2.0 * (cols + jitter[i, :, 0]) / 6 - 1.0, 1.0 - 2.0 * (rows + jitter[i, :, 1]) / 5], axis=1)
        np.testing.assert_array_equal(points[i], expected.astype(np.float32))


# -- make_mnist_points ----------------------------------------------------------------------------


def test_make_mnist_points_writes_selected_digits_with_their_images(tmp_path):
    source, images, labels = fake_mnist_npz(tmp_path / "mnist.npz")
    manifest = make_mnist_points(
        tmp_path / "ds", [3, 4], n_points=16, val_fraction=0.25, test_fraction=0.25, source=source, command="genflow data make-test"
    )
    counts = {split: info["count"] for split, info in manifest["splits"].items()}
    assert counts == {"train": 4, "val": 2, "test": 2} and manifest["attrs"]["val_fraction"] == 0.25
    assert manifest["attrs"]["digits"] == [3, 4] and manifest["attrs"]["coordinates"] == "x right, y up, [-1,1]"
    assert manifest["attrs"]["n_points"] == 16 and manifest["seed"] == 42
    assert "mnist.npz" in manifest["source"]["mnist"] and manifest["source"]["command"] == "genflow data make-test"
    assert verify_shards(tmp_path / "ds") == []

    train = load_split(tmp_path / "ds", "train")
    val, test = load_split(tmp_path / "ds", "val"), load_split(tmp_path / "ds", "test")
    assert train["points"].shape == (4, 16, 2) and train["points"].dtype == np.float32
    index = np.concatenate([train["image_index"], val["image_index"], test["image_index"]])
    assert sorted(index.tolist()) == np.flatnonzero(np.isin(labels, [3, 4])).tolist()  # train / val / test disjoint
    np.testing.assert_array_equal(train["label"], labels[train["image_index"]])
    np.testing.assert_array_equal(train["image"], images[train["image_index"]])


def test_make_mnist_points_is_deterministic_and_honours_limit(tmp_path):
    source, _, _ = fake_mnist_npz(tmp_path / "mnist.npz")
    make_mnist_points(tmp_path / "a", [1, 2, 5], n_points=8, limit=5, source=source, seed=3)
    make_mnist_points(tmp_path / "b", [1, 2, 5], n_points=8, limit=5, source=source, seed=3)
    a, b = load_split(tmp_path / "a", "train"), load_split(tmp_path / "b", "train")
    assert len(a["label"]) + len(load_split(tmp_path / "a", "test")["label"]) == 5
    for field in a:
        np.testing.assert_array_equal(a[field], b[field])
    assert read_manifest(tmp_path / "a")["splits"] == read_manifest(tmp_path / "b")["splits"]


def test_make_mnist_points_rejects_bad_digits(tmp_path):
    source, _, _ = fake_mnist_npz(tmp_path / "mnist.npz")
    with pytest.raises(DataSourceError, match="digits must be a non-empty list of 0-9"):
        make_mnist_points(tmp_path / "ds", [12], source=source)
