"""Hand poses, MANO-style: 2 hands x 15 joints x axis-angle = 90 numbers per sample.

Joint order per hand (MANO): index 1-3, middle 1-3, pinky 1-3, ring 1-3, thumb 1-3; a sample is
[left hand (45), right hand (45)]. No real hand-pose data can be had here (MANO is licence-gated),
so `genflow data make-hands` generates poses procedurally (by default the contact-solved grasps of
`genflow.data.hand_grasps`; `--generator families` the synergy model below), and
`genflow data import-npz DIR --kind hands` converts users' real MANO-style files.

Procedural model (right-hand frame; the left hand is its mirror image, axis-angle (x, -y, -z)). A
joint's rotation is Rz(flexion) Ry(abduction) Rx(twist) (bone along x); its anatomical limits are
`JOINT_LIMITS`. Each hand draws a grasp family (`FAMILIES`: open, fist, pinch, point, power, tripod)
that sets a curl per finger and a finger spread; curls get a shared synergy offset and per-finger
noise; then per joint: MCP flexion ∝ curl, PIP ≈ 1.1 x MCP range, DIP = 2/3 PIP (tendon coupling),
abduction = spread pattern x (1 - curl), small twists, everything clipped to the limits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genflow.data.shards import ShardWriter
from genflow.errors import DataSourceError
from genflow.models.rotations import axis_angle_to_matrix, euler_zyx_to_axis_angle, matrix_to_euler_zyx

__all__ = ["FAMILIES", "FINGERS", "GENERATORS", "JOINT_LIMITS", "make_hand_poses", "make_hands_dataset", "inside_limits",
           "hand_joint_positions", "read_hands_npz", "import_hands_npz", "POSE_DIM"]

POSE_DIM = 90
FINGERS = ("index", "middle", "pinky", "ring", "thumb")
FAMILIES = ("open", "fist", "pinch", "point", "power", "tripod")
# curls (index, middle, pinky, ring, thumb) in [0, 1] and finger spread per family
_FAMILY_CURLS = {
    "open": ([0.05, 0.05, 0.05, 0.05, 0.1], 0.8),
    "fist": ([0.95, 0.95, 0.95, 0.95, 0.7], 0.0),
    "pinch": ([0.55, 0.15, 0.15, 0.15, 0.6], 0.3),
    "point": ([0.02, 0.9, 0.9, 0.9, 0.6], 0.1),
    "power": ([0.65, 0.65, 0.65, 0.65, 0.5], 0.2),
    "tripod": ([0.5, 0.5, 0.75, 0.75, 0.55], 0.3),
}
_SPREAD = np.array([-0.25, 0.0, 0.45, 0.2, 0.5])  # abduction direction per finger at full spread (rad)

# (15, 3, 2): per joint, (flexion z, abduction y, twist x) x (low, high), radians
_FINGER = [[(-0.35, 1.6), (-0.35, 0.35), (-0.2, 0.2)], [(0.0, 1.9), (-0.1, 0.1), (-0.1, 0.1)], [(0.0, 1.4), (-0.1, 0.1), (-0.1, 0.1)]]
_THUMB = [[(-0.5, 1.0), (-0.6, 0.9), (-0.6, 0.6)], [(-0.2, 1.0), (-0.2, 0.2), (-0.2, 0.2)], [(-0.3, 1.3), (-0.1, 0.1), (-0.1, 0.1)]]
JOINT_LIMITS = np.array(_FINGER * 4 + _THUMB, dtype=np.float64)


def _mirror(axis_angle: np.ndarray) -> np.ndarray:
    """Right-hand axis-angle <-> left-hand axis-angle (the mirror image across the y-z plane): (x, -y, -z)."""
    return axis_angle * np.array([1.0, -1.0, -1.0])


def _hand_angles(families: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) family ids -> (N, 15, 3) (flexion, abduction, twist) angles, clipped to the limits."""
    n = len(families)
    curls = np.array([_FAMILY_CURLS[FAMILIES[f]][0] for f in families])
    spread = np.array([_FAMILY_CURLS[FAMILIES[f]][1] for f in families])
    curls = np.clip(curls + rng.normal(0, 0.08, (n, 1)) + rng.normal(0, 0.07, (n, 5)), 0, 1)  # synergy + per finger
    spread = np.clip(spread + rng.normal(0, 0.1, n), 0, 1)
    angles = np.zeros((n, 5, 3, 3))
    lim = JOINT_LIMITS.reshape(5, 3, 3, 2)
    mcp_range = lim[:, 0, 0, 1] - lim[:, 0, 0, 0]
    angles[:, :, 0, 0] = lim[:, 0, 0, 0] + curls * mcp_range * 0.9 + rng.normal(0, 0.05, (n, 5))
    angles[:, :, 1, 0] = curls * lim[:, 1, 0, 1] * 0.95 + rng.normal(0, 0.06, (n, 5))
    angles[:, :, 2, 0] = angles[:, :, 1, 0] * 2 / 3 + rng.normal(0, 0.05, (n, 5))
    angles[:, :, 0, 1] = spread[:, None] * _SPREAD * (1 - curls) + rng.normal(0, 0.03, (n, 5))
    angles[:, :, 1:, 1] = rng.normal(0, 0.02, (n, 5, 2))
    angles[:, :, :, 2] = rng.normal(0, 0.03, (n, 5, 3))
    angles[:, 4, 0, 1] += 0.3 * curls[:, 4]  # the thumb opposes as it curls
    angles = angles.reshape(n, 15, 3)
    return np.clip(angles, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1])


def _angles_to_axis_angle(angles: np.ndarray) -> np.ndarray:
    return euler_zyx_to_axis_angle(torch.from_numpy(angles)).numpy()


def make_hand_poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` procedural poses (n, 90) float32 [left 45 | right 45] and families (n, 2) [left, right]."""
    rng = np.random.default_rng(seed)
    families = rng.integers(len(FAMILIES), size=(n, 2))
    same = rng.random(n) < 0.5  # half the samples: both hands in the same grasp
    families[same, 0] = families[same, 1]
    left = _mirror(_angles_to_axis_angle(_hand_angles(families[:, 0], rng)))
    right = _angles_to_axis_angle(_hand_angles(families[:, 1], rng))
    poses = np.concatenate([left.reshape(n, 45), right.reshape(n, 45)], axis=1).astype(np.float32)
    return poses, families.astype(np.int64)


def joint_angles(poses: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 90) -> (N, 30, 3) (flexion, abduction, twist) in the right-hand frame (left un-mirrored)."""
    p = torch.as_tensor(np.asarray(poses), dtype=torch.float64).reshape(-1, 30, 3)
    p = torch.cat([p[:, :15] * torch.tensor([1.0, -1.0, -1.0], dtype=p.dtype), p[:, 15:]], dim=1)
    return matrix_to_euler_zyx(axis_angle_to_matrix(p))


def inside_limits(poses: np.ndarray | torch.Tensor, tolerance: float = 1e-3) -> np.ndarray:
    """(N, 30) bool: each joint's rotation within its anatomical limits."""
    angles = joint_angles(poses).numpy()
    lim = np.concatenate([JOINT_LIMITS, JOINT_LIMITS])
    return np.all((angles >= lim[..., 0] - tolerance) & (angles <= lim[..., 1] + tolerance), axis=-1)


# --- a simple skeleton for pictures -------------------------------------------------------------------
_BONES = np.array([0.045, 0.028, 0.022])  # proximal, middle, distal (m)
_BASES = {"index": (0.09, 0.025), "middle": (0.095, 0.0), "pinky": (0.08, -0.045), "ring": (0.09, -0.022),
          "thumb": (0.03, 0.035)}
_BASE_YAW = {"index": 0.1, "middle": 0.0, "pinky": -0.2, "ring": -0.1, "thumb": 0.9}


def hand_joint_positions(hand_pose: np.ndarray, left: bool = False) -> np.ndarray:
    """Forward kinematics of one hand (45,) -> (5, 4, 3) points: MCP, PIP, DIP, tip per finger (wrist at 0)."""
    aa = hand_pose.reshape(15, 3)
    aa = _mirror(aa) if left else aa
    R = axis_angle_to_matrix(torch.from_numpy(aa.astype(np.float64))).numpy().reshape(5, 3, 3, 3)
    out = np.zeros((5, 4, 3))
    for f, name in enumerate(FINGERS):
        x, y = _BASES[name]
        yaw = _BASE_YAW[name]
        frame = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        point = np.array([x, y, 0.0])
        out[f, 0] = point
        for j in range(3):
            frame = frame @ R[f, j]
            point = point + frame @ np.array([_BONES[j], 0, 0])
            out[f, j + 1] = point
    if left:
        out[..., 1] *= -1
    return out


# --- datasets ------------------------------------------------------------------------------------------
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

    `generator`: "grasps" (joint angles solved to touch objects, :mod:`genflow.data.hand_grasps`) or
    "families" (linear finger synergies + noise, :func:`make_hand_poses`). The manifest's attrs name it
    and its family names, which the `family` field indexes."""
    if generator == "grasps":
        from genflow.data.hand_grasps import GRASP_FAMILIES as names, make_grasp_poses as make  # imports this module
    elif generator == "families":
        names, make = FAMILIES, make_hand_poses
    else:
        raise ValueError(f"hand pose generator {generator!r}: expected one of {', '.join(GENERATORS)}")
    poses, families = make(n, seed)
    parts = _split(n, seed + 1, 0.1, 0.1)
    module = "genflow.data.hand_grasps" if generator == "grasps" else "genflow.data.hands"
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
    from genflow.data.npz_import import ImportSummary

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
                      source={"npz_dir": str(src_dir), "command": command or f"genflow data import-npz {src_dir} --kind hands"},
                      attrs={"files": len(files), "skipped": len(skipped)}, overwrite=overwrite)
    report = out_dir / "skipped.txt"
    report.write_text("".join(f"{name}\t{reason}\n" for name, reason in skipped))
    return ImportSummary(converted=len(poses), skipped=skipped, out_dir=out_dir,
                         splits={k: len(v) for k, v in parts.items()}, skipped_report=report, num_files=len(files),
                         manifest=manifest)
