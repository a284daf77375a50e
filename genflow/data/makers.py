"""The library's dataset makers: MNIST as point clouds and as labelled images (registered in pyproject.toml;
see genflow.data.registry). A recipe's own world (NAMO scenes, Moving MNIST, hand poses) registers its
makers and importers from its package, e.g. `genflow_recipes.namo.data_commands`.

Each is an options dataclass (the fields are `genflow data make KIND key=value`; the comment on each
field is its help line) and a function that calls the library and says what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, PositiveInt, Range
from genflow.data.registry import DataCommand, DataJob, check_data_options
from genflow.errors import ConfigError

__all__ = ["DIGIT4", "MNIST_POINTS", "MNIST_IMAGES"]


# --- MNIST point clouds (digit4) -------------------------------------------------------------------------
@dataclass
class PointCloudOptions:
    out: str | None = None  # output dataset directory (default datasets/digit4, datasets/mnist-points-<digits>)
    points: PositiveInt = 500  # points per cloud
    seed: NonNegativeInt = 42  # seed of the split and the point sampling
    limit: PositiveInt | None = None  # keep at most this many digits
    source: str | None = None  # MNIST IDX directory or .npz (default: cached / registry copy)
    val_fraction: Annotated[float, Range(ge=0, le=0.5)] = 0.1  # fraction for the val split (test is 0.1)
    overwrite: bool = False  # replace an existing dataset
    # how a cloud is drawn from an image: intensity (points ∝ pixel intensity, faint rim included) or source
    # (FlowMix's: pixels > 128 chosen uniformly, Gaussian jitter, its scale); recorded in the manifest
    clouds: Literal["intensity", "source"] = "intensity"

    def __post_init__(self) -> None:
        check_data_options(self)


@dataclass
class MnistPointsOptions(PointCloudOptions):
    digits: str = "4"  # comma-separated digits 0-9, e.g. 4,7

    def __post_init__(self) -> None:
        super().__post_init__()
        self.chosen()

    def chosen(self) -> list[int]:
        try:
            chosen = sorted({int(d) for d in str(self.digits).split(",") if d.strip()})
        except ValueError:
            chosen = []
        if not chosen or any(d < 0 or d > 9 for d in chosen):
            raise ConfigError(f"data option 'digits' {self.digits!r}: expected comma-separated digits 0-9, e.g. 4,7")
        return chosen


def _point_clouds(digits: list[int], out: Path, o: PointCloudOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data import make_mnist_points

    make_mnist_points(out, digits, n_points=o.points, seed=o.seed, limit=o.limit, source=o.source,
                      overwrite=o.overwrite, val_fraction=o.val_fraction, command=job.command,
                      construction=o.clouds)
    return {"dataset": out}


def _make_digit4(o: PointCloudOptions, job: DataJob) -> dict[str, Any]:
    return _point_clouds([4], Path(o.out or "datasets/digit4"), o, job)


def _make_mnist_points(o: MnistPointsOptions, job: DataJob) -> dict[str, Any]:
    digits = o.chosen()
    return _point_clouds(digits, Path(o.out or f"datasets/mnist-points-{''.join(map(str, digits))}"), o, job)


DIGIT4 = DataCommand("digit4", "real MNIST 4s -> 2-D point clouds -> shards (80/10/10 split, seeded)",
                     PointCloudOptions, _make_digit4)
MNIST_POINTS = DataCommand("mnist-points", "any MNIST digits -> 2-D point clouds -> shards", MnistPointsOptions,
                           _make_mnist_points)


# --- labelled images (dtm) ---------------------------------------------------------------------------
@dataclass
class MnistImageOptions:
    out: str | None = None  # output dataset directory (default datasets/mnist-images, datasets/fashion-mnist-images)
    fashion: bool = False  # Fashion-MNIST (Debian package dataset-fashion-mnist, or source=DIR)
    source: str | None = None  # IDX directory or .npz (default: cached / registry copy of MNIST)
    val_fraction: Annotated[float, Range(ge=0, le=0.5)] = 0.1  # fraction of the official training images held out as val
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        check_data_options(self)


def _make_mnist_images(o: MnistImageOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.image_shards import load_image_source, make_image_shards

    name = "fashion-mnist" if o.fashion else "mnist"
    out = Path(o.out or f"datasets/{name}-images")
    make_image_shards(load_image_source(o.source, fashion=o.fashion), out, name=name, val_fraction=o.val_fraction,
                      overwrite=o.overwrite, command=job.command)
    return {"dataset": out}


MNIST_IMAGES = DataCommand("mnist-images", "labelled 28 x 28 images (official test split; val held out of train) -> shards, for dtm",
                           MnistImageOptions, _make_mnist_images)


