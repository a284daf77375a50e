"""Hand poses, MANO-style: 2 hands x 15 joints x axis-angle = 90 numbers per sample.

Joint order per hand (MANO): index 1-3, middle 1-3, pinky 1-3, ring 1-3, thumb 1-3; a sample is
[left hand (45), right hand (45)]. No real hand-pose data can be had here (MANO is licence-gated),
so `genflow data make-hands` generates poses procedurally (by default the contact-solved grasps of
`genflow_recipes.hand_vae.grasps`; `--generator families` the synergy model below), and
`genflow data import hands DIR` converts users' real MANO-style files (`dataset.py`).

Procedural model (right-hand frame; the left hand is its mirror image, axis-angle (x, -y, -z)). A
joint's rotation is Rz(flexion) Ry(abduction) Rx(twist) (bone along x); its anatomical limits are
`JOINT_LIMITS`. Each hand draws a grasp family (`FAMILIES`: open, fist, pinch, point, power, tripod)
that sets a curl per finger and a finger spread; curls get a shared synergy offset and per-finger
noise; then per joint: MCP flexion ∝ curl, PIP ≈ 1.1 x MCP range, DIP = 2/3 PIP (tendon coupling),
abduction = spread pattern x (1 - curl), small twists, everything clipped to the limits.
"""

from __future__ import annotations

import numpy as np
import torch

from genflow_recipes.hand_vae.rotations import axis_angle_to_matrix, euler_zyx_to_axis_angle, matrix_to_euler_zyx

__all__ = ["FAMILIES", "FINGERS", "JOINT_LIMITS", "BONES", "BASES", "BASE_YAW", "make_hand_poses", "inside_limits",
           "joint_angles", "hand_joint_positions", "angles_to_axis_angle", "mirror", "POSE_DIM"]

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


def mirror(axis_angle: np.ndarray) -> np.ndarray:
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


def angles_to_axis_angle(angles: np.ndarray) -> np.ndarray:
    return euler_zyx_to_axis_angle(torch.from_numpy(angles)).numpy()


def make_hand_poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` procedural poses (n, 90) float32 [left 45 | right 45] and families (n, 2) [left, right]."""
    rng = np.random.default_rng(seed)
    families = rng.integers(len(FAMILIES), size=(n, 2))
    same = rng.random(n) < 0.5  # half the samples: both hands in the same grasp
    families[same, 0] = families[same, 1]
    left = mirror(angles_to_axis_angle(_hand_angles(families[:, 0], rng)))
    right = angles_to_axis_angle(_hand_angles(families[:, 1], rng))
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
BONES = np.array([0.045, 0.028, 0.022])  # proximal, middle, distal (m)
BASES = {"index": (0.09, 0.025), "middle": (0.095, 0.0), "pinky": (0.08, -0.045), "ring": (0.09, -0.022),
          "thumb": (0.03, 0.035)}
BASE_YAW = {"index": 0.1, "middle": 0.0, "pinky": -0.2, "ring": -0.1, "thumb": 0.9}


def hand_joint_positions(hand_pose: np.ndarray, left: bool = False) -> np.ndarray:
    """Forward kinematics of one hand (45,) -> (5, 4, 3) points: MCP, PIP, DIP, tip per finger (wrist at 0)."""
    aa = hand_pose.reshape(15, 3)
    aa = mirror(aa) if left else aa
    R = axis_angle_to_matrix(torch.from_numpy(aa.astype(np.float64))).numpy().reshape(5, 3, 3, 3)
    out = np.zeros((5, 4, 3))
    for f, name in enumerate(FINGERS):
        x, y = BASES[name]
        yaw = BASE_YAW[name]
        frame = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        point = np.array([x, y, 0.0])
        out[f, 0] = point
        for j in range(3):
            frame = frame @ R[f, j]
            point = point + frame @ np.array([BONES[j], 0, 0])
            out[f, j + 1] = point
    if left:
        out[..., 1] *= -1
    return out
