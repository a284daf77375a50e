"""`genflow data make moving-mnist` and `genflow data import moving-mnist FILE`, registered in pyproject.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, PositiveInt, Range
from genflow.data.registry import DataCommand, DataJob, check_data_options

__all__ = ["MAKE_MOVING_MNIST", "IMPORT_MOVING_MNIST"]


# --- Moving MNIST ----------------------------------------------------------------------------------
@dataclass
class MovingMnistOptions:
    sequences: PositiveInt = 4000  # training sequences (digits from MNIST train)
    val_sequences: NonNegativeInt = 500  # validation sequences (MNIST train digits held out of every training sequence)
    test_sequences: NonNegativeInt = 1000  # test sequences (digits from MNIST test)
    frames: Annotated[int, Range(ge=2)] = 20  # frames per sequence
    digits: PositiveInt = 2  # digits per sequence
    size: Annotated[int, Range(ge=28)] = 64  # canvas side in pixels
    frame_size: PositiveInt = 32  # token frame side (the canvas is downsampled to it, see preprocessing)
    preprocessing: Literal["area", "copilot4d"] = "area"  # area (2x2 average, min(floor(16x),15)) | copilot4d (bilinear scipy zoom, floor(15x), the source's tokens)
    ego_digit_id: NonNegativeInt = 0  # digit whose motion gives the actions: 0 = the largest (by ink)
    seed: NonNegativeInt = 0  # seed of digits and trajectories
    out: str = "datasets/mmnist"  # output dataset directory
    source: str | None = None  # MNIST IDX directory or .npz (default: cached / registry copy)
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        check_data_options(self)


def _make_moving_mnist(o: MovingMnistOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.mmnist_wm.world import make_moving_mnist

    make_moving_mnist(o.out, sequences=o.sequences, val_sequences=o.val_sequences, test_sequences=o.test_sequences,
                      frames=o.frames, digits=o.digits, size=o.size, frame_size=o.frame_size, ego_digit_id=o.ego_digit_id,
                      preprocessing=o.preprocessing, seed=o.seed, mnist_source=o.source, overwrite=o.overwrite, command=job.command)
    return {"dataset": Path(o.out)}


MAKE_MOVING_MNIST = DataCommand("moving-mnist", "Moving MNIST (bouncing real digits) -> 16-level tokens, exact ego actions -> shards",
                           MovingMnistOptions, _make_moving_mnist)


@dataclass
class MovingMnistImportOptions:
    out: str = "datasets/mmnist-canonical"  # output dataset directory
    frame_size: PositiveInt = 32  # token frame side
    preprocessing: Literal["area", "copilot4d"] = "area"  # area (2x2 average, min(floor(16x),15)) | copilot4d (bilinear scipy zoom, floor(15x), the source's tokens)
    ego_digit_id: NonNegativeInt = 0  # tracked digit: 0 = the largest blob
    val_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of sequences for the val split
    test_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of sequences for the test split
    limit: PositiveInt | None = None  # convert at most this many sequences
    seed: NonNegativeInt = 0  # seed of the split
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        check_data_options(self)


def _import_moving_mnist(o: MovingMnistImportOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.mmnist_wm.world import import_moving_mnist

    import_moving_mnist(job.source, o.out, frame_size=o.frame_size, ego_digit_id=o.ego_digit_id, preprocessing=o.preprocessing,
                        val_fraction=o.val_fraction, test_fraction=o.test_fraction, limit=o.limit, seed=o.seed, overwrite=o.overwrite, command=job.command)
    return {"dataset": Path(o.out)}


IMPORT_MOVING_MNIST = DataCommand("moving-mnist", "the canonical mnist_test_seq.npy -> tokens + actions tracked from the digit's motion -> shards",
                                  MovingMnistImportOptions, _import_moving_mnist,
                                  source="the canonical mnist_test_seq.npy, shape (T, N, 64, 64) uint8")
