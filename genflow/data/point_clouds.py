"""Digit images -> 2-D point clouds -> shards.

Two constructions of a cloud from an image (``clouds=``):

- ``intensity`` (the default): pixel intensities are a density; each point picks a pixel with
  probability proportional to intensity, then a uniform position inside it; ``x = 2 (col + u) / W - 1``.
- ``source`` (FlowMix's, the digit4 recipe's source): only pixels brighter than 128 count, each
  equally likely; a point is its pixel centre plus Gaussian jitter of std ``1 / sqrt(12)`` pixel
  (the variance of a uniform position in the pixel), scaled by ``(col - 13.5) / 13.5``, so the
  centres of the outer pixels sit at exactly -1 and 1 (1 / 0.964 of the intensity construction's scale).

Coordinates have x to the right and y up (row 0 of the image is the top).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genflow.data.mnist import load_mnist
from genflow.data.shards import ShardWriter, check_split_fractions, split_indices
from genflow.errors import DataSourceError

__all__ = ["CLOUD_CONSTRUCTIONS", "COORDINATES", "cloud_construction", "images_to_point_clouds", "make_mnist_points"]

COORDINATES = "x right, y up, [-1,1]"
CLOUD_CONSTRUCTIONS = ("intensity", "source")
# the source construction keeps pixels strictly brighter than this (of 255)
SOURCE_THRESHOLD = 128

# Images converted per vectorised step: bounds the temporary arrays to ~100 MB at 500 points.
_IMAGES_PER_STEP = 4096


def images_to_point_clouds(images: np.ndarray, n_points: int, rng: np.random.Generator, *,
                           construction: str = "intensity") -> np.ndarray:
    """Samples a point cloud from each image.

    ``intensity``: each point picks a pixel (row, col) with probability proportional to its intensity
    (with replacement), adds uniform jitter u, v in [0, 1), and maps to ``x = 2 (col + u) / W - 1``,
    ``y = 1 - 2 (row + v) / H``. ``source``: each point picks one of the pixels brighter than 128
    uniformly (with replacement), adds Gaussian jitter ``N(0, 1/12)`` in pixel units, and maps to
    ``x = (col - c) / c``, ``y = -(row - r) / r`` with ``c = (W - 1) / 2``, ``r = (H - 1) / 2``.

    Args:
        images: ``(N, H, W)`` uint8 (any non-negative integer dtype works).
        n_points: Points per image, P.
        rng: Source of randomness; the same generator state gives the same clouds.
        construction: ``"intensity"`` or ``"source"`` (see the module docstring).

    Returns:
        ``(N, P, 2)`` float32 point clouds, columns (x, y).

    Raises:
        DataSourceError: An image is all zero (for ``source``: has no pixel above 128); the message
            names its index.
    """
    _check_construction(construction)
    images = np.asarray(images)
    if images.ndim != 3:
        raise DataSourceError(f"images_to_point_clouds: expected images of shape (N, H, W), got {images.shape}")
    if images.dtype.kind not in "iu" or (images.size and images.min() < 0):
        raise DataSourceError(f"images_to_point_clouds: expected non-negative integer images, got {images.dtype}")
    if n_points < 1:
        raise DataSourceError(f"images_to_point_clouds: n_points must be >= 1, got {n_points}")
    n, height, width = images.shape
    flat = images.reshape(n, height * width).astype(np.int64)
    if construction == "source":
        flat = (flat > SOURCE_THRESHOLD).astype(np.int64)  # equal weight for every kept pixel
    totals = flat.sum(axis=1)
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        what = f"has no pixel above {SOURCE_THRESHOLD}" if construction == "source" else "is all zero"
        raise DataSourceError(f"image {int(empty[0])} {what}; cannot sample a point cloud from it")
    out = np.empty((n, n_points, 2), np.float32)
    for lo in range(0, n, _IMAGES_PER_STEP):
        hi = min(n, lo + _IMAGES_PER_STEP)
        pixels = _sample_pixels(flat[lo:hi], totals[lo:hi], n_points, rng)
        rows, cols = np.divmod(pixels, width)
        if construction == "source":
            jitter = rng.normal(0.0, 1.0 / np.sqrt(12.0), (hi - lo, n_points, 2))
            centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
            out[lo:hi, :, 0] = (cols + jitter[..., 0] - centre_x) / centre_x
            out[lo:hi, :, 1] = -(rows + jitter[..., 1] - centre_y) / centre_y
        else:
            jitter = rng.random((hi - lo, n_points, 2))
            out[lo:hi, :, 0] = 2.0 * (cols + jitter[..., 0]) / width - 1.0
            out[lo:hi, :, 1] = 1.0 - 2.0 * (rows + jitter[..., 1]) / height
    return out


def _check_construction(construction: str) -> None:
    if construction not in CLOUD_CONSTRUCTIONS:
        raise DataSourceError(f"unknown cloud construction {construction!r}; valid: {', '.join(CLOUD_CONSTRUCTIONS)}")


def cloud_construction(manifest: dict) -> str:
    """The cloud construction a point-cloud dataset was made with (``intensity`` for sets made before the option)."""
    return str(manifest.get("attrs", {}).get("clouds", "intensity"))


def _sample_pixels(flat: np.ndarray, totals: np.ndarray, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Pixel indices ``(n, P)`` drawn from each row's intensity distribution, all rows at once.

    The rows' integer cumulative sums are laid end to end so that one searchsorted serves every
    image: a draw for image i is an integer in [start_i, start_i + total_i), which lands exactly on
    one of image i's pixels with probability intensity / total. Integer arithmetic keeps it exact.
    """
    n, num_pixels = flat.shape
    cumulative = np.cumsum(flat, axis=None)  # (n * num_pixels,), row-major: image after image
    starts = cumulative[::num_pixels] - flat[:, 0]  # mass before each image
    draws = rng.integers(starts[:, None], (starts + totals)[:, None], size=(n, n_points))
    positions = np.searchsorted(cumulative, draws, side="right")  # first pixel whose cumsum exceeds the draw
    return positions - (np.arange(n) * num_pixels)[:, None]


def make_mnist_points(
    out_dir: str | Path,
    digits: list[int],
    *,
    n_points: int = 500,
    seed: int = 42,
    limit: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    source: str | Path | None = None,
    cache_dir: str | Path = "datasets/raw",
    overwrite: bool = False,
    max_shard_bytes: int = 256 * 2**20,
    command: str | None = None,
    construction: str = "intensity",
) -> dict:
    """Builds a point-cloud shard dataset from the MNIST images of some digits.

    All 70k images (train then test) are pooled; those labelled with one of ``digits`` are kept,
    optionally cut to ``limit`` after a seeded shuffle, split into train / val / test by a seeded
    permutation (val is held out of the training data: best checkpoints are chosen on it), and converted to point clouds. Deterministic given ``seed`` (and the MNIST source).

    Fields written per sample: ``points`` ``(P, 2)`` float32, ``label`` ``()`` int64, ``image_index``
    ``()`` int64 (index into the pooled 70k), ``image`` ``(28, 28)`` uint8 (kept so the Chamfer
    noise floor can be measured by resampling the same image, without the raw MNIST).

    Args:
        out_dir: Dataset directory to write.
        digits: Digit labels to keep, e.g. ``[4]``.
        n_points: Points per cloud, P.
        seed: Seed for selection, split and point sampling.
        limit: Keep at most this many images (after the seeded shuffle).
        val_fraction: Fraction of the kept images that go to the ``val`` split.
        test_fraction: Fraction of the kept images that go to the ``test`` split.
        source: MNIST source for :func:`~genflow.data.mnist.load_mnist` (None: cache or download).
        cache_dir: MNIST cache directory.
        overwrite: Replace an existing dataset in ``out_dir``.
        max_shard_bytes: Shard size bound passed to :class:`~genflow.data.shards.ShardWriter`.
        command: The CLI command that makes this dataset (e.g. ``"genflow data make-digit4"``);
            recorded in the manifest so errors about damaged shards can say how to re-create them.
        construction: How a cloud is drawn from an image, ``"intensity"`` or ``"source"`` (see
            :func:`images_to_point_clouds`); recorded in the manifest's attrs as ``clouds``.

    Returns:
        The manifest written.
    """
    digits = sorted({int(d) for d in digits})
    if not digits or any(d < 0 or d > 9 for d in digits):
        raise DataSourceError(f"make_mnist_points: digits must be a non-empty list of 0-9, got {digits}")
    check_split_fractions(val_fraction, test_fraction, "make_mnist_points")
    _check_construction(construction)
    if limit is not None and limit < 1:
        raise DataSourceError(f"make_mnist_points: limit must be >= 1, got {limit}")
    mnist = load_mnist(source, cache_dir)

    # Independent streams, so e.g. changing `limit` does not change how points are jittered.
    select_rng, split_rng, points_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    kept = np.flatnonzero(np.isin(mnist.labels, digits))
    if kept.size == 0:
        raise DataSourceError(f"{mnist.source}: no images with labels {digits}")
    if limit is not None:
        kept = kept[select_rng.permutation(kept.size)[:limit]]
    floor = SOURCE_THRESHOLD if construction == "source" else 0
    empty = kept[mnist.images[kept].reshape(kept.size, -1).max(axis=1) <= floor]
    if empty.size:
        raise DataSourceError(f"{mnist.source}: image {int(empty[0])} has no pixel above {floor}; "
                              "cannot sample a point cloud from it")
    kept = kept[split_rng.permutation(kept.size)]
    splits = split_indices(kept, val_fraction=val_fraction, test_fraction=test_fraction)

    height, width = mnist.images.shape[1:]
    fields = {
        "points": ((n_points, 2), "float32"),
        "label": ((), "int64"),
        "image_index": ((), "int64"),
        "image": ((height, width), "uint8"),
    }
    attrs = {
        "digits": digits,
        "n_points": n_points,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "limit": limit,
        "coordinates": COORDINATES,
        "clouds": construction,
        "num_pooled_images": len(mnist.images),
    }
    data_source = {"mnist": mnist.source}
    if command:
        data_source["command"] = command
    with ShardWriter(
        out_dir, fields, max_shard_bytes=max_shard_bytes, seed=seed, source=data_source, attrs=attrs,
        overwrite=overwrite,
    ) as writer:
        for split, indices in splits.items():
            writer.write(split, **_empty_batch(fields))  # registers the split even if it ends up empty
            for lo in range(0, indices.size, _IMAGES_PER_STEP):
                batch = indices[lo : lo + _IMAGES_PER_STEP]
                images = mnist.images[batch]
                writer.write(
                    split,
                    points=images_to_point_clouds(images, n_points, points_rng, construction=construction),
                    label=mnist.labels[batch],
                    image_index=batch.astype(np.int64),
                    image=images,
                )
    return writer.close()


def _empty_batch(fields: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    return {name: np.empty((0, *shape), dtype) for name, (shape, dtype) in fields.items()}
