"""`genflow data make hands` (procedural poses) and `genflow data import hands DIR` (a user's MANO-style
.npz files), registered in pyproject.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, Range
from genflow.data.npz_import import NpzImportOptions, import_result
from genflow.data.registry import DataCommand, DataJob, check_data_options

__all__ = ["MAKE_HANDS", "IMPORT_HANDS"]


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


def _import_hands(o: NpzImportOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.hand_vae.dataset import import_hands_npz

    summary = import_hands_npz(job.source, Path(o.out or "datasets/hands"), val_fraction=o.val_fraction,
                               test_fraction=o.test_fraction, seed=o.seed, limit=o.limit, overwrite=o.overwrite,
                               command=job.command, progress=job.progress)
    return import_result(summary)


IMPORT_HANDS = DataCommand("hands", "a directory of MANO-style pose .npz files (many poses each) -> shards",
                           NpzImportOptions, _import_hands, source="directory of pose .npz files (searched recursively)")
