"""`genflow data make hands` (procedural poses) and `genflow data import hands DIR` (a user's MANO-style
.npz files), registered in pyproject.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, PositiveInt, Range
from genflow.data.npz_import import NpzImportOptions, import_result
from genflow.data.registry import DataCommand, DataJob, check_data_options

__all__ = ["MAKE_HANDS", "IMPORT_HANDS", "HandImportOptions"]


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
        check_data_options(self)


def _make_hands(o: HandPoseOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.hand_vae.dataset import make_hands_dataset

    make_hands_dataset(o.out, o.n, o.seed, overwrite=o.overwrite, command=job.command, generator=o.generator)
    return {"dataset": Path(o.out)}


MAKE_HANDS = DataCommand("hands", "procedural MANO-style two-hand poses (grasps solved against objects, or synergy families; "
                    "joint limits) -> shards", HandPoseOptions, _make_hands)


@dataclass
class HandImportOptions(NpzImportOptions):
    """`genflow data import hands DIR key=value`: the shared import options, plus how frames are split."""

    val_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of the frames for val (split=set: whole sets, as close as their sizes allow)
    test_fraction: Annotated[float, Range(ge=0, le=0.9)] = 0.1  # fraction of the frames for test (split=set: whole sets, as close as their sizes allow)
    limit: PositiveInt | None = None  # read at most this many files, in sorted order (split=given: from each of train/ val/ test/)
    # set: whole files (capture sets) go to train / val / test, no set in two; frame: frames at random (neighbouring
    # frames of a sequence leak from train into val / test); given: DIR/train, DIR/val, DIR/test as they are.
    # Unset: given when DIR has those three folders, else set
    split: Literal["set", "frame", "given"] | None = None
    splits: str | None = None  # the source's splits folder ({train,val,test}_samples.json: set -> frame indices into DIR/<set>.npz), kept exactly (a split by frame)


def _import_hands(o: HandImportOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.hand_vae.dataset import import_hands_npz, sets_table

    summary = import_hands_npz(job.source, Path(o.out or "datasets/hands"), split=o.split, splits_dir=o.splits,
                               val_fraction=o.val_fraction, test_fraction=o.test_fraction, seed=o.seed, limit=o.limit,
                               overwrite=o.overwrite, command=job.command, progress=job.progress)
    result = import_result(summary)
    result["split"] = {"set": f"by set (whole files; seed {o.seed})", "frame": f"by frame (seed {o.seed})",
                       "given": "as given (DIR/train, DIR/val, DIR/test)",
                       "splits": f"the source's frame lists ({o.splits})"}[summary.split]
    result["sets"] = f"{len(summary.sets)} (also in {summary.out_dir / 'splits.txt'})\n{sets_table(summary.sets)}"
    if summary.warning:
        result["warning"] = summary.warning
    return result


IMPORT_HANDS = DataCommand("hands", "a directory of MANO-style pose .npz files (one capture set of many frames each; "
                           "split by set, frame, as given, or the source's splits) -> shards",
                           HandImportOptions, _import_hands,
                           source="directory of pose .npz files (searched recursively), or with train/ val/ test/ folders")
