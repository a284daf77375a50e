"""How far NAMO goals lie from the object: genflow's scene files against the source's one-push data.

    python benchmarks/namo_scene_stats.py DIR_OR_H5 [...]

A directory of genflow scene files (`genflow data make namo ...`) or the source's object-centred h5
(`1_push_train.h5` on sage_learning's branch `local_input_repr`: `local_target_goal`,
`local_target_object`). Prints per input: scenes, IoU of the goal with the object's current footprint
(masks > 0.5; mean and median), the share of scenes with two or more valid modes (genflow files only) and
how many goal masks peak above 1.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np


def _masks(source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if source.suffix == ".h5":
        import h5py

        with h5py.File(source) as f:
            return f["local_target_goal"][()], f["local_target_object"][()], None
    goals, objects, modes = [], [], []
    for path in sorted(source.glob("scene_*.npz")):
        with np.load(path) as scene:
            goals.append(scene["target_goal"]), objects.append(scene["target_object"]), modes.append(int(scene["num_modes"]))
    return np.stack(goals), np.stack(objects), np.array(modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}")
    for source in args.sources:
        goal, target, modes = _masks(source)
        n = len(goal)
        g, o = (goal > 0.5).reshape(n, -1), (target > 0.5).reshape(n, -1)
        iou = (g & o).sum(1) / np.maximum((g | o).sum(1), 1)
        multi = f"{np.mean(modes >= 2):.3f}" if modes is not None else "-"
        print(f"{source}: {n} scenes, goal IoU with the object mean {iou.mean():.3f} median {np.median(iou):.3f}, "
              f"2+ modes {multi}, goals peaking above 1: {int((goal.reshape(n, -1).max(1) > 1).sum())}")


if __name__ == "__main__":
    main()
