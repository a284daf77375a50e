"""genflow: one toolkit for generative-model training recipes.

data -> HDF5 shards -> loader -> recipe (model, objective) -> engine -> run dir -> sample / eval / export
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
