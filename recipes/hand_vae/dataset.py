"""Hand poses -> shards: generated (`genflow data make hands`) or a user's MANO-style .npz files
(`genflow data import hands DIR`), each with splits train / val / test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genflow.data.npz_import import ImportSummary
from genflow.data.shards import ShardWriter
from genflow.errors import DataSourceError
from genflow_recipes.hand_vae.skeleton import FAMILIES, POSE_DIM, make_hand_poses

__all__ = ["GENERATORS", "make_hands_dataset", "read_hands_npz", "import_hands_npz"]


def _write(out_dir: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, source: dict, attrs: dict,
           overwrite: bool) -> dict:
    fields = {"pose": ((POSE_DIM,), "float32"), "family": ((2,), "int64")}
    with ShardWriter(out_dir, fields, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for split, (poses, families) in splits.items():
            writer.write(split, pose=poses.astype(np.float32), family=families.astype(np.int64))
    return writer.close()


def _split(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    return {"train": order[n_val + n_test:], "val": order[:n_val], "test": order[n_val:n_val + n_test]}


GENERATORS = ("grasps", "families")


def make_hands_dataset(out_dir: str | Path, n: int = 200_000, seed: int = 0, overwrite: bool = False,
                       command: str | None = None, generator: str = "grasps") -> dict:
    """Procedural poses -> shards with splits train / val / test (80 / 10 / 10).

    `generator`: "grasps" (joint angles solved to touch objects, :mod:`genflow_recipes.hand_vae.grasps`) or
    "families" (linear finger synergies + noise, :func:`make_hand_poses`). The manifest's attrs name it
    and its family names, which the `family` field indexes."""
    if generator == "grasps":
        from genflow_recipes.hand_vae.grasps import GRASP_FAMILIES as names, make_grasp_poses as make
    elif generator == "families":
        names, make = FAMILIES, make_hand_poses
    else:
        raise ValueError(f"hand pose generator {generator!r}: expected one of {', '.join(GENERATORS)}")
    poses, families = make(n, seed)
    parts = _split(n, seed + 1, 0.1, 0.1)
    module = "genflow_recipes.hand_vae.grasps" if generator == "grasps" else "genflow_recipes.hand_vae.skeleton"
    source = {"generator": f"{module} (procedural, MANO-style)", "command": command or "genflow data make-hands"}
    return _write(out_dir, {k: (poses[i], families[i]) for k, i in parts.items()}, source=source,
                  attrs={"generator": generator, "families": list(names),
                         "joints": "index, middle, pinky, ring, thumb x 3; left then right"},
                  overwrite=overwrite)


_PAIRS = (("lhand", "rhand"), ("left_hand_pose", "right_hand_pose"))
_SINGLE = ("hand_pose", "hand_poses", "poses", "pose")


def read_hands_npz(path: str | Path) -> np.ndarray:
    """One MANO-style npz -> (N, 90) float32: keys lhand / rhand or left_hand_pose / right_hand_pose,
    each (N, 45) or (N, 15, 3); or one (N, 90) / (N, 30, 3) array."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt member raises BadZipFile, zlib.error, ...: skip the file
        raise DataSourceError(f"{path}: not a readable npz ({type(err).__name__}: {err})") from None
    pose = None
    for left_key, right_key in _PAIRS:
        if left_key in arrays and right_key in arrays:
            left, right = (np.asarray(arrays[k], dtype=np.float64) for k in (left_key, right_key))
            left, right = left.reshape(len(left), -1), right.reshape(len(right), -1)
            if left.shape[1] != 45 or right.shape[1] != 45 or len(left) != len(right):
                raise DataSourceError(f"{path}: {left_key} / {right_key} have shapes {arrays[left_key].shape} / "
                                      f"{arrays[right_key].shape}; expected (N, 45) or (N, 15, 3) each")
            pose = np.concatenate([left, right], axis=1)
            break
    if pose is None:
        candidates = [k for k in _SINGLE if k in arrays] or (list(arrays) if len(arrays) == 1 else [])
        if not candidates:
            raise DataSourceError(f"{path}: no hand poses; expected keys lhand + rhand, left_hand_pose + right_hand_pose, "
                                  f"or one (N, 90) array (found: {', '.join(arrays) or 'nothing'})")
        pose = np.asarray(arrays[candidates[0]], dtype=np.float64)
        pose = pose.reshape(len(pose), -1) if pose.ndim >= 2 else pose.reshape(1, -1)
        if pose.shape[1] != POSE_DIM:
            raise DataSourceError(f"{path}: '{candidates[0]}' has shape {arrays[candidates[0]].shape}; expected (N, 90) or (N, 30, 3)")
    if not np.all(np.isfinite(pose)):
        raise DataSourceError(f"{path}: hand poses contain NaN or Inf")
    if np.abs(pose).max() > 4 * np.pi:
        raise DataSourceError(f"{path}: rotation vectors up to {np.abs(pose).max():.1f} rad; expected axis-angle in radians")
    return pose.astype(np.float32)


def import_hands_npz(src_dir: str | Path, out_dir: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     seed: int = 42,
                     limit: int | None = None, overwrite: bool = False, command: str | None = None, progress=None,
                     **_ignored):
    """Every *.npz under `src_dir` (many poses per file) -> shards (train / val / test); unreadable or
    malformed files are skipped and reported (`skipped.txt`); none readable is an error."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    files = sorted(src_dir.rglob("*.npz"))[:limit]
    if not files:
        raise DataSourceError(f"{src_dir}: no .npz files found")
    poses, skipped = [], []
    for i, path in enumerate(files):
        try:
            poses.append(read_hands_npz(path))
        except DataSourceError as err:
            skipped.append((str(path.relative_to(src_dir)), str(err).split(": ", 1)[-1]))
        if progress:
            progress(i + 1, len(files))
    if not poses:
        raise DataSourceError(f"{src_dir}: none of {len(files)} .npz files holds hand poses (first: {skipped[0][0]}: {skipped[0][1]})")
    pose = np.concatenate(poses)
    families = np.full((len(pose), 2), -1, dtype=np.int64)  # unknown for real data
    parts = _split(len(pose), seed, val_fraction, test_fraction)
    manifest = _write(out_dir, {k: (pose[i], families[i]) for k, i in parts.items()},
                      source={"npz_dir": str(src_dir), "command": command or f"genflow data import hands {src_dir}"},
                      attrs={"files": len(files), "skipped": len(skipped)}, overwrite=overwrite)
    report = out_dir / "skipped.txt"
    report.write_text("".join(f"{name}\t{reason}\n" for name, reason in skipped))
    return ImportSummary(converted=len(poses), skipped=skipped, out_dir=out_dir,
                         splits={k: len(v) for k, v in parts.items()}, skipped_report=report, num_files=len(files),
                         manifest=manifest)
