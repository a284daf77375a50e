"""Grasp hand poses: joint angles solved so that the fingers touch an object (the "grasps" generator).

The "families" generator (`genflow_recipes.hand_vae.skeleton`) is linear synergies plus noise: four principal
components explain 98 % of its right-hand angle variance, and a Gaussian fits it well. Here each hand
holds or meets something, and its angles are what a kinematic solve makes of that contact: a
non-linear, object-dependent function of a few latent numbers (object size, placement, tilt, where the
fingers land). Four components explain ~84 %, and a Gaussian fitted to the pinches parts thumb and
index (> 5 mm) in ~70 % of its samples (tests/data/test_hand_grasps.py).

* ``cylinder`` / ``sphere``: a power grasp around an object of random radius (cylinder 12-45 mm,
  sphere 18-50 mm), random placement on the flexion side of the fingers and random tilt (up to 20°
  about two axes). All five tips lie on the surface; the middle phalanx (its midpoint) too where the
  finger can reach (index, middle fully; ring, pinky only weakly asked); PIP, DIP and the proximal
  phalanx stay outside; on a cylinder the tips land in bands along the axis (index highest).
* ``pinch``: thumb tip meets index tip at a random reachable point; the other fingers curl at random.
* ``tripod``: thumb, index and middle tips on a small sphere (diameter 5-15 mm) centred where they
  meet; ring and pinky curl at random.
* ``open``: a relaxed open hand; ``point``: index extended (the straightest with the MCP bent back),
  the others curled, the thumb over them. No solve: curls and spread are drawn and mapped
  non-linearly (powers of the curl, a pinky-to-index cascade, spread fading with curl).

Positions come from the skeleton of :func:`genflow_recipes.hand_vae.skeleton.hand_joint_positions` (`BONES`,
`BASES`, `BASE_YAW`); :func:`joint_positions_from_angles` is its batched torch twin (tested equal).
That skeleton puts the knuckles in the plane the fingers flex in (spread along the flexion
direction), so fingers flex across one another and a grasp is close to planar; the objects sit where
that skeleton can wrap them (beside the index, right of the thumb).

The solve: batched Levenberg-Marquardt (damped Gauss-Newton, 20 steps, per finger) on squared contact
distances + a small anatomical prior (DIP = k x PIP with k random in 0.55-0.8, small base twists, a
weak pull to a drawn hand shape that also seeds the solve, with noise, so equal contacts give varied
solutions). Angles are `low + (high - low) * sigmoid(u)`, so always inside `JOINT_LIMITS` (unchanged:
the thumb's CMC already allows opposition; solved grasps use abduction -0.1..0.8 and twist
-0.1..0.5 rad, 5th-95th percentile). Per finger the unknowns are the base joint's three angles and the
two distal flexions; the distal abductions and twists are drawn and held fixed. The Jacobian is the
chain's (joint axis x lever arm); fingers sharing a contact (pinch, tripod) meet through a contact
point updated in closed form between steps. Half the two-hand samples use one family for both hands;
the left hand is the mirror image of a right-hand articulation, as in the families generator.

Contacts reached (4096 hands per family; distance of the tip to the surface or to the other tip):
cylinder tips median 0.09 mm / 95th pct 2.3 mm, sphere 0.09 / 1.7 mm, pinch thumb-index 0.9 / 2.3 mm,
tripod tips to the object 0.4 / 2.1 mm; joints more than 2 mm inside a power-grasp object: 1-3 %.

Modelled: joint limits, DIP-PIP coupling, bone lines touching an analytic surface. Not modelled: soft
tissue and finger thickness (the bone polyline touches, not skin), friction or force closure,
collisions between fingers, or of fingers and object beyond the listed contact / outside terms, the
palm as a surface, wrist or global rotation (a MANO hand pose has none; the object moves instead),
and MANO's own skeleton (bone lengths, joint centres and axes are the simple picture skeleton's).
Real MANO-style data stays the import path: `genflow data import hands DIR`.

Speed (measured 2026-12): `make_grasp_poses(200_000)` in 30 s on 2 cores of an AMD EPYC (torch CPU,
float32 solve; 27 s of it solving), with another process loading both cores. The solve runs chunks of
4096 hands in threads with one intra-op thread each: torch's own threads on these small ops were ~20x
slower on the busy machine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from genflow_recipes.hand_vae.skeleton import BASE_YAW, BASES, BONES, FINGERS, JOINT_LIMITS, angles_to_axis_angle, mirror
from genflow_recipes.hand_vae.rotations import euler_zyx_to_matrix

__all__ = ["GRASP_FAMILIES", "Grasps", "make_grasp_poses", "solve_grasps", "joint_positions_from_angles"]

GRASP_FAMILIES = ("cylinder", "sphere", "pinch", "tripod", "open", "point")
_INDEX, _MIDDLE, _PINKY, _RING, _THUMB = range(5)  # positions in FINGERS


# --- batched forward kinematics (batch dimensions last: a (3, 3, F, N) tensor is F fingers of N hands) ----
def _rotations(angles: torch.Tensor) -> torch.Tensor:
    """(J, 3, *B) euler (z, y, x) -> (J, 3, 3, *B) Rz Ry Rx."""
    return euler_zyx_to_matrix(angles.movedim(1, -1)).movedim(-2, 1).movedim(-1, 2)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(3, 3, *B) @ (3, 3, *B) as three broadcast products (a batched bmm is slow at 3 x 3)."""
    return a[:, 0:1] * b[0:1] + a[:, 1:2] * b[1:2] + a[:, 2:3] * b[2:3]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over dim 0 of (3, *B) tensors."""
    return torch.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Length over dim 0 of a (3, *B) tensor."""
    return (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()


def _skeleton(dtype: torch.dtype, fingers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`hand_joint_positions`' knuckles (3, F, 1), fan frames Rz(yaw) (3, 3, F, 1) and bone lengths (3,)."""
    names = [FINGERS[f] for f in fingers]
    base = torch.tensor([[*BASES[f], 0.0] for f in names], dtype=torch.float64).T.unsqueeze(-1)
    yaw = torch.tensor([BASE_YAW[f] for f in names], dtype=torch.float64)
    c, s, o, i = yaw.cos(), yaw.sin(), torch.zeros_like(yaw), torch.ones_like(yaw)
    fan = torch.stack([c, -s, o, s, c, o, o, o, i]).unflatten(0, (3, 3)).unsqueeze(-1)
    return base.to(dtype), fan.to(dtype), torch.tensor(BONES, dtype=dtype)


_ALL = tuple(range(5))


def _chain(angles: torch.Tensor, fingers: tuple[int, ...] = _ALL) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(3 joints, 3, F, N) angles -> points [MCP, PIP, DIP, tip] (3, F, N) and frames F0..F3 (3, 3, F, N).

    `hand_joint_positions`' arithmetic: frame_{j+1} = frame_j R_j, point_{j+1} = point_j + L_j frame_{j+1} x."""
    base, fan, bones = _skeleton(angles.dtype, fingers)
    rot = _rotations(angles)
    frames, points = [fan.expand(3, 3, *angles.shape[2:])], [base.expand(3, *angles.shape[2:])]
    for j in range(3):
        frames.append(_matmul(frames[j], rot[j]))
        points.append(points[j] + bones[j] * frames[j + 1][:, 0])
    return points, frames


def joint_positions_from_angles(angles: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Batched torch :func:`~genflow_recipes.hand_vae.skeleton.hand_joint_positions` of right hands: (N, 15, 3) euler
    (flexion z, abduction y, twist x) -> (N, 5, 4, 3) MCP, PIP, DIP, tip per finger (wrist at 0)."""
    a = torch.as_tensor(angles)
    points, _ = _chain(a.reshape(-1, 5, 3, 3).permute(2, 3, 1, 0))
    return torch.stack(points).permute(3, 2, 0, 1)


# the solve's unknowns per finger, (joint, euler component): the base joint's flexion, abduction and
# twist, then the two distal flexions; the distal abductions and twists are drawn and held fixed
_UNKNOWNS = ((0, 0), (0, 1), (0, 2), (1, 0), (2, 0))
_K = len(_UNKNOWNS)


def _jacobians(angles: torch.Tensor, points: list[torch.Tensor], frames: list[torch.Tensor]) -> torch.Tensor:
    """d(PIP, DIP, tip) / d(unknown angles): (3 xyz, 3 points, 5 unknowns, F, N).

    Turning joint j about a world axis w moves a downstream point p by w x (p - o_j); the axes of
    Rz(z) Ry(y) Rx(x) applied after frame F_j are F_j z, F_j Rz(z) y and F_{j+1} x."""
    f0, z0 = frames[0], angles[0, 0]
    axes = [f0[:, 2], f0[:, 1] * z0.cos() - f0[:, 0] * z0.sin(), frames[1][:, 0], frames[1][:, 2], frames[2][:, 2]]
    downstream = torch.stack(points[1:], 1)  # (3, 3 points, F, N)
    columns = []
    for w, (j, _) in zip(axes, _UNKNOWNS):
        column = _cross(w.unsqueeze(1), downstream - points[j].unsqueeze(1))
        column[:, :j] = 0  # points at or before the joint do not move
        columns.append(column)
    return torch.stack(columns, 2)


# --- the solve ----------------------------------------------------------------------------------------
# a named point of a finger = weights over (MCP, PIP, DIP, tip)
_POINTS = {"pip": (0.0, 1.0, 0.0, 0.0), "dip": (0.0, 0.0, 1.0, 0.0), "tip": (0.0, 0.0, 0.0, 1.0),
           "proximal": (0.5, 0.5, 0.0, 0.0), "middle": (0.0, 0.5, 0.5, 0.0)}
_CM = 100.0  # contact rows in cm: 1 mm off costs as much as 0.1 rad off a unit-weight prior


def _point(points: list[torch.Tensor], name: str) -> torch.Tensor:
    return sum(w * p for w, p in zip(_POINTS[name], points) if w)


@dataclass
class _Rows:
    """Contact rows: residual (F, N), its gradient w.r.t. a named point's position (3, F, N), a weight."""

    values: list[torch.Tensor]
    grads: list[torch.Tensor]
    points: list[str]
    weights: list[torch.Tensor | float]

    def add(self, value: torch.Tensor, grad: torch.Tensor, point: str, weight: torch.Tensor | float = 1.0) -> None:
        self.values.append(value * _CM)
        self.grads.append(grad * _CM)
        self.points.append(point)
        self.weights.append(weight)


@dataclass
class _Problem:
    """One family's grasps: least squares over the unknown angles of the fingers that touch something."""

    target: torch.Tensor  # (3, 3, 5, N) the drawn hand shape: the fixed angles, the prior's centre, the start
    fingers: tuple[int, ...]  # the F fingers solved; the others keep their target angles
    prior: torch.Tensor  # (5 unknowns, F, N) weight of each unknown's pull to its target
    dip_ratio: torch.Tensor  # (F, N): the prior DIP = ratio x PIP (tendon coupling)
    rows: Callable[[list[torch.Tensor], dict], _Rows]  # contact rows from the points (3, F, N) and the state
    state: dict  # the object / contact parameters
    update: Callable[[list[torch.Tensor], dict], None] | None = None  # closed-form step of a shared contact point


_DIP_WEIGHT = 0.3
_U_WEIGHT = 0.02  # keeps sigmoid(u) off saturation
_LIMITS = torch.tensor(JOINT_LIMITS.reshape(5, 3, 3, 2))  # finger, joint, component, (low, high)


def _bounds(dtype: torch.dtype, fingers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Limits of the unknowns, (5 unknowns, F, 1) low and high."""
    lim = torch.stack([_LIMITS[list(fingers), j, c] for j, c in _UNKNOWNS]).to(dtype)
    return lim[..., 0:1], lim[..., 1:2]


def _with_unknowns(fixed: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    angles = fixed.clone()
    for m, (j, c) in enumerate(_UNKNOWNS):
        angles[j, c] = theta[m]
    return angles


def _normal_equations(problem: _Problem, u: torch.Tensor, theta: torch.Tensor, dtheta: torch.Tensor,
                      points: list[torch.Tensor], jac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per finger: cost (F, N), gradient (5, F, N) and Gauss-Newton matrix (5, 5, F, N), all in u."""
    rows = problem.rows(points, problem.state)
    jac = jac * dtheta  # to u: theta = low + (high - low) sigmoid(u)
    point_jac = {name: sum(jac[:, i - 1] if w == 1 else w * jac[:, i - 1] for i, w in enumerate(_POINTS[name]) if w and i)
                 for name in set(rows.points)}  # (3, 5 unknowns, F, N)
    j_rows, r_rows = [], []
    for value, g, name, weight in zip(rows.values, rows.grads, rows.points, rows.weights):
        j_pt = point_jac[name]
        j_rows.append((g[0] * j_pt[0] + g[1] * j_pt[1] + g[2] * j_pt[2]) * weight)
        r_rows.append(value * weight)
    j_all, r_all = torch.stack(j_rows), torch.stack(r_rows)  # (R, 5, F, N), (R, F, N)
    # prior rows act on the angles directly: the pull to the target, DIP - ratio x PIP, and u itself
    fixed = problem.target[:, :, list(problem.fingers)]
    prior_r = problem.prior * (theta - torch.stack([fixed[j, c] for j, c in _UNKNOWNS]))
    dip_r = _DIP_WEIGHT * (theta[4] - problem.dip_ratio * theta[3])
    cost = (r_all * r_all).sum(0) + (prior_r * prior_r).sum(0) + dip_r * dip_r + _U_WEIGHT ** 2 * (u * u).sum(0)
    grad = (j_all * r_all.unsqueeze(1)).sum(0) + (problem.prior * prior_r) * dtheta + _U_WEIGHT ** 2 * u
    grad[3] = grad[3] - _DIP_WEIGHT * problem.dip_ratio * dip_r * dtheta[3]
    grad[4] = grad[4] + _DIP_WEIGHT * dip_r * dtheta[4]
    entries = {}
    for i in range(_K):
        for j in range(i, _K):
            entries[i, j] = (j_all[:, i] * j_all[:, j]).sum(0)
        entries[i, i] = entries[i, i] + (problem.prior[i] * dtheta[i]) ** 2 + _U_WEIGHT ** 2
    w2 = _DIP_WEIGHT ** 2
    entries[3, 3] = entries[3, 3] + w2 * (problem.dip_ratio * dtheta[3]) ** 2
    entries[3, 4] = entries[3, 4] - w2 * problem.dip_ratio * dtheta[3] * dtheta[4]
    entries[4, 4] = entries[4, 4] + w2 * dtheta[4] ** 2
    hess = torch.stack([torch.stack([entries[min(i, j), max(i, j)] for j in range(_K)]) for i in range(_K)])
    return cost, grad, hess


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x with a x = b for batch-last (k, k, *B) symmetric positive definite a, (k, *B) b: Cholesky, unrolled."""
    k = a.shape[0]
    low = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            s = a[i, j]
            for m in range(j):
                s = s - low[i][m] * low[j][m]
            low[i][j] = s.clamp_min(1e-12).sqrt() if i == j else s / low[j][j]
    y = []
    for i in range(k):
        s = b[i]
        for m in range(i):
            s = s - low[i][m] * y[m]
        y.append(s / low[i][i])
    x = [None] * k
    for i in reversed(range(k)):
        s = y[i]
        for m in range(i + 1, k):
            s = s - low[m][i] * x[m]
        x[i] = s / low[i][i]
    return torch.stack(x)


# Levenberg-Marquardt: damping x (diag + 0.1) keeps the steps short along directions only the weak prior
# sees (without the absolute term the tripod took 40+ steps); a step is kept per finger where it lowers the cost
_DAMPING, _DAMPING_FLOOR, _DAMPING_DOWN, _DAMPING_UP = 0.1, 0.1, 0.5, 3.0


def _levenberg_marquardt(problem: _Problem, u: torch.Tensor, steps: int) -> torch.Tensor:
    """Solve the problem from u (5 unknowns, F, N); returns all angles (3, 3, 5, N)."""
    fingers = problem.fingers
    low, high = _bounds(u.dtype, fingers)
    fixed = problem.target[:, :, list(fingers)]

    def evaluate(u):
        s = torch.sigmoid(u)
        theta, dtheta = low + (high - low) * s, (high - low) * s * (1 - s)
        angles = _with_unknowns(fixed, theta)
        points, frames = _chain(angles, fingers)
        return theta, dtheta, points, _jacobians(angles, points, frames)

    theta, dtheta, points, jac = evaluate(u)
    cost, grad, hess = _normal_equations(problem, u, theta, dtheta, points, jac)
    damping = torch.full_like(cost, _DAMPING)
    for _ in range(steps):
        damped = hess.clone()
        for m in range(_K):
            damped[m, m] = hess[m, m] * (1 + damping) + damping * _DAMPING_FLOOR
        u_new = u + _solve_spd(damped, -grad).clamp(-3, 3)
        new = evaluate(u_new)
        cost_new, grad_new, hess_new = _normal_equations(problem, u_new, *new)
        better = cost_new < cost  # (F, N)
        u, theta, dtheta, jac = (torch.where(better, b, a) for a, b in ((u, u_new), (theta, new[0]), (dtheta, new[1]), (jac, new[3])))
        points = [torch.where(better, b, a) for a, b in zip(points, new[2])]
        cost, grad, hess = (torch.where(better, b, a) for a, b in ((cost, cost_new), (grad, grad_new), (hess, hess_new)))
        damping = torch.where(better, damping * _DAMPING_DOWN, damping * _DAMPING_UP).clamp(1e-6, 1e4)
        if problem.update is not None:  # the shared contact point moves: re-linearise there
            problem.update(points, problem.state)
            cost, grad, hess = _normal_equations(problem, u, theta, dtheta, points, jac)
    angles = problem.target.clone()
    angles[:, :, list(fingers)] = _with_unknowns(fixed, theta)
    return angles


# --- drawn hand shapes --------------------------------------------------------------------------------
_DTYPE = torch.float32


def _uniform(rng: np.random.Generator, low, high, shape) -> torch.Tensor:
    return torch.as_tensor(rng.uniform(low, high, shape), dtype=_DTYPE)


def _normal(rng: np.random.Generator, scale, shape) -> torch.Tensor:
    return torch.as_tensor(rng.normal(0.0, 1.0, shape) * np.asarray(scale), dtype=_DTYPE)


def _clip(angles: torch.Tensor) -> torch.Tensor:
    """(3, 3, 5, N) angles clipped to `JOINT_LIMITS`."""
    lim = _LIMITS.permute(1, 2, 0, 3).unsqueeze(-2).to(angles.dtype)  # (3 joints, 3, 5, 1, 2)
    return torch.minimum(torch.maximum(angles, lim[..., 0]), lim[..., 1])


_SPREAD = torch.tensor([-0.25, 0.0, 0.45, 0.2, 0.5], dtype=_DTYPE).unsqueeze(-1)  # abduction at full spread


def _curled(curl: torch.Tensor, spread: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Curl (5, N) in [0, 1] and spread (N,) -> (3, 3, 5, N) angles, non-linearly: per hand the MCP or
    the PIP leads the closing (curl ** gamma vs curl ** (1 / gamma)), the MCP hyper-extends as the hand
    opens ((1 - curl) ** 3), the spread fades with the curl (cos²), the thumb opposes as it curls (sin);
    plus small random distal abductions and twists."""
    n = curl.shape[1]
    lim = _LIMITS.to(_DTYPE)
    angles = torch.zeros(3, 3, 5, n, dtype=_DTYPE)
    gamma = _uniform(rng, 0.6, 1.6, (1, n))
    angles[0, 0] = lim[:, 0, 0, 0, None] * (1 - curl) ** 3 + (lim[:, 0, 0, 1, None] - 0.1) * curl ** gamma
    angles[1, 0] = lim[:, 1, 0, 1, None] * 0.95 * curl ** (1 / gamma) + _normal(rng, 0.05, (5, n))
    angles[2, 0] = angles[1, 0] * _uniform(rng, 0.55, 0.8, (5, n)) + _normal(rng, 0.04, (5, n))
    angles[0, 1] = _SPREAD * spread * torch.cos(curl * np.pi / 2) ** 2 + _normal(rng, 0.03, (5, n))
    angles[0, 2] = _normal(rng, 0.04, (5, n))
    angles[1:, 1:] = _normal(rng, [[[[0.02]], [[0.03]]]], (2, 2, 5, n))
    thumb = curl[_THUMB]
    angles[0, 0, _THUMB] = -0.3 + 0.9 * thumb ** 1.5 + _normal(rng, 0.08, n)
    angles[0, 1, _THUMB] = 0.15 + 0.6 * torch.sin(thumb * np.pi / 2) + _normal(rng, 0.08, n)
    angles[0, 2, _THUMB] = 0.35 * thumb ** 2 + _normal(rng, 0.1, n)
    angles[1:, 1:, _THUMB] = _normal(rng, [[[0.05], [0.03]]], (2, 2, n))
    return _clip(angles)


def _start(problem: _Problem, rng: np.random.Generator, noise: float = 0.4) -> torch.Tensor:
    """u of the target angles of the solved fingers, plus noise: the same contacts give varied solutions."""
    low, high = _bounds(_DTYPE, problem.fingers)
    fixed = problem.target[:, :, list(problem.fingers)]
    s = ((torch.stack([fixed[j, c] for j, c in _UNKNOWNS]) - low) / (high - low)).clamp(0.02, 0.98)
    return torch.log(s / (1 - s)) + _normal(rng, noise, s.shape)


def _prior(fingers: tuple[int, ...], n: int) -> torch.Tensor:
    """(5 unknowns, F, N): a weak pull to the drawn shape, firmer on the base twist (the thumb's CMC may rotate)."""
    prior = torch.full((_K, len(fingers), n), 0.05, dtype=_DTYPE)
    prior[2] = torch.tensor([0.1 if f == _THUMB else 0.3 for f in fingers], dtype=_DTYPE).unsqueeze(-1)
    return prior


# --- families -----------------------------------------------------------------------------------------
_BAND = torch.tensor([1.5, 0.5, -1.5, -0.5, 0.0], dtype=_DTYPE).unsqueeze(-1)  # order along a cylinder: index .. pinky
_FINGERS_ONLY = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=_DTYPE).unsqueeze(-1)  # rows not for the thumb
# middle phalanx on the object "where sensible": the skeleton's knuckles sit in the flexion plane, so the
# ring and most of all the pinky start far below the object and reach it with the tip only
_MIDDLE_CONTACT = torch.tensor([1.0, 1.0, 0.1, 0.3, 0.0], dtype=_DTYPE).unsqueeze(-1)


def _power(n: int, rng: np.random.Generator, shape: str) -> _Problem:
    """A cylinder or sphere on the fingers' flexion side: tips and middle phalanges on it, joints outside it."""
    radius = _uniform(rng, 0.012, 0.045, n) if shape == "cylinder" else _uniform(rng, 0.018, 0.050, n)
    tilt_x, tilt_y = _uniform(rng, -0.35, 0.35, n), _uniform(rng, -0.35, 0.35, n)
    axis = torch.stack([tilt_y.sin() * tilt_x.cos(), -tilt_x.sin(), tilt_y.cos() * tilt_x.cos()])  # about z
    center = torch.stack([_uniform(rng, 0.09, 0.125, n), 0.035 + radius + _uniform(rng, -0.005, 0.015, n),
                          _uniform(rng, -0.012, 0.012, n)])
    band = _uniform(rng, 0.011, 0.017, n) * _BAND + _uniform(rng, -0.006, 0.006, n)  # (5, N) axial targets
    curl = _uniform(rng, 0.55, 1.0, (5, n)) * (1 - radius / 0.09)  # bigger objects: start less curled
    curl[_INDEX] *= 0.5  # the index starts under the object: flexed more, it would pass it on the wrong side
    target = _curled(curl, _uniform(rng, 0.0, 0.6, n), rng)

    def surface(p, state):
        v = p - state["center"]
        if shape == "sphere":
            dist = _norm(v)
            return dist - state["radius"], v / dist.clamp_min(1e-9), None
        along = (v * state["axis"]).sum(0)
        radial = v - along * state["axis"]
        dist = _norm(radial)
        return dist - state["radius"], radial / dist.clamp_min(1e-9), along

    def rows(points, state):
        out = _Rows([], [], [], [])
        gap, normal, along = surface(points[3], state)
        out.add(gap, normal, "tip")
        if along is not None:
            out.add(along - state["band"], state["axis"].expand_as(normal), "tip", 0.3 * _FINGERS_ONLY)
        gap, normal, _ = surface(_point(points, "middle"), state)
        out.add(gap, normal, "middle", _MIDDLE_CONTACT)
        for name in ("pip", "dip", "proximal"):  # outside the object: one-sided rows
            gap, normal, _ = surface(_point(points, name), state)
            inside = gap < 0
            out.add(torch.where(inside, gap, 0), torch.where(inside, normal, 0), name)
        return out

    state = {"center": center.unsqueeze(1), "radius": radius, "axis": axis.unsqueeze(1), "band": band}
    return _Problem(target, _ALL, _prior(_ALL, n), _uniform(rng, 0.55, 0.8, (5, n)), rows, state)


def _unit_rows(out: _Rows, delta: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
    """Three rows tip - point (x, y, z)."""
    for d in range(3):
        grad = torch.zeros(3, *delta.shape[1:], dtype=delta.dtype)
        grad[d] = 1.0
        out.add(delta[d], grad, "tip", weight)


def _pinch(n: int, rng: np.random.Generator) -> _Problem:
    """Thumb tip meets index tip near a random index-reachable point; the other fingers curl at random."""
    curl = torch.stack([_uniform(rng, 0.25, 0.6, n), _uniform(rng, 0.0, 0.9, n), _uniform(rng, 0.0, 1.0, n),
                        _uniform(rng, 0.0, 1.0, n), _uniform(rng, 0.3, 0.8, n)])
    curl[_RING] = (curl[_RING] + curl[_PINKY]) / 2  # ring follows pinky (shared flexor)
    target = _curled(curl, _uniform(rng, 0.0, 0.8, n), rng)
    fingers = (_INDEX, _THUMB)
    points, _ = _chain(target[:, :, list(fingers)], fingers)
    goal = points[3][:, 0] + _normal(rng, 0.01, (3, n))
    state = {"goal": goal, "contact": goal.clone()}

    def rows(points, state):
        out = _Rows([], [], [], [])
        _unit_rows(out, points[3] - state["contact"].unsqueeze(1))
        return out

    def update(points, state):  # the point that minimises the rows, pulled weakly to the goal
        state["contact"] = (points[3].sum(1) + 0.05 * state["goal"]) / 2.05

    return _Problem(target, fingers, _prior(fingers, n), _uniform(rng, 0.55, 0.8, (2, n)), rows, state, update)


def _tripod(n: int, rng: np.random.Generator) -> _Problem:
    """Thumb, index and middle tips on a small sphere centred where they meet; ring and pinky curl at random."""
    curl = torch.stack([_uniform(rng, 0.3, 0.6, n), _uniform(rng, 0.3, 0.6, n), _uniform(rng, 0.4, 1.0, n),
                        _uniform(rng, 0.4, 1.0, n), _uniform(rng, 0.4, 0.8, n)])
    target = _curled(curl, _uniform(rng, 0.0, 0.5, n), rng)
    fingers = (_INDEX, _MIDDLE, _THUMB)
    points, _ = _chain(target[:, :, list(fingers)], fingers)
    goal = points[3].mean(1) + _normal(rng, 0.008, (3, n))
    state = {"goal": goal, "center": goal.clone(), "radius": _uniform(rng, 0.0025, 0.0075, n)}

    def rows(points, state):
        out = _Rows([], [], [], [])
        v = points[3] - state["center"].unsqueeze(1)
        dist = _norm(v)
        out.add(dist - state["radius"], v / dist.clamp_min(1e-9), "tip")
        return out

    def update(points, state):
        state["center"] = (points[3].sum(1) + 0.1 * state["goal"]) / 3.1

    return _Problem(target, fingers, _prior(fingers, n), _uniform(rng, 0.55, 0.8, (3, n)), rows, state, update)


def _point_hand(n: int, rng: np.random.Generator) -> torch.Tensor:
    """(3, 3, 5, N): index extended (the straightest with the MCP bent back), the others curled, thumb over them."""
    straight = _uniform(rng, 0.0, 1.0, n)
    curl = torch.stack([0.15 * straight ** 3, _uniform(rng, 0.75, 1.0, n), _uniform(rng, 0.8, 1.0, n),
                        _uniform(rng, 0.75, 1.0, n), _uniform(rng, 0.5, 0.9, n)])
    target = _curled(curl, _uniform(rng, 0.0, 0.4, n), rng)
    target[0, 0, _INDEX] -= 0.3 * (1 - straight) ** 2 * _uniform(rng, 0.0, 1.0, n)
    return _clip(target)


def _open_hand(n: int, rng: np.random.Generator) -> torch.Tensor:
    """(3, 3, 5, N): a relaxed open hand, rest curl cascading from the pinky, spread fading with it."""
    relax = _uniform(rng, 0.0, 1.0, n) ** 2  # most hands nearly flat, some relaxed
    cascade = torch.tensor([0.6, 0.8, 1.2, 1.0, 0.7], dtype=_DTYPE).unsqueeze(-1)
    curl = (0.35 * relax * cascade + 0.05 * _uniform(rng, 0.0, 1.0, (5, n)) ** 3).clamp(0, 1)
    target = _curled(curl, (1 - relax) * _uniform(rng, 0.3, 1.0, n), rng)
    target[0, 0, :4] -= 0.25 * (1 - relax) * _uniform(rng, 0.0, 1.0, (4, n)) ** 2  # stretched: MCPs bend back
    return _clip(target)


# --- assembling ---------------------------------------------------------------------------------------
@dataclass
class Grasps:
    """Solved right-hand articulations and what they touch (NaN where a family has no such thing).

    angles: (N, 15, 3) (flexion z, abduction y, twist x), inside `JOINT_LIMITS`.
    center: (N, 3) the cylinder's axis point, the sphere's or tripod object's centre, the pinch contact.
    axis: (N, 3) the cylinder's axis. radius: (N,) cylinder, sphere, tripod object.
    """

    angles: np.ndarray
    center: np.ndarray
    axis: np.ndarray
    radius: np.ndarray


_STEPS = 20
_CHUNK = 4096
_PROBLEMS = {"cylinder": lambda n, rng: _power(n, rng, "cylinder"), "sphere": lambda n, rng: _power(n, rng, "sphere"),
             "pinch": _pinch, "tripod": _tripod}
_SHAPES = {"open": _open_hand, "point": _point_hand}


def _solve_family(family: str, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(3, 3, 5, n) angles of `n` hands of one family and their object parameters ((3, n) / (n,))."""
    if family in _SHAPES:
        return _SHAPES[family](n, rng), {}
    problem = _PROBLEMS[family](n, rng)
    angles = _levenberg_marquardt(problem, _start(problem, rng), _STEPS)
    found = {"center": problem.state.get("center", problem.state.get("contact")),
             "axis": problem.state.get("axis"), "radius": problem.state.get("radius")}
    return _clip(angles), {k: v.reshape(-1, n) if k != "radius" else v for k, v in found.items() if v is not None}


@contextmanager
def _one_intra_op_thread():
    """The solve's ops are small (~10^5 numbers): torch's intra-op threads gain little there and, on a
    busy machine, lose ~20x to spinning at every op (measured on 2 shared cores); chunks run in threads instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def solve_grasps(families: np.ndarray, seed: int = 0, workers: int | None = None) -> Grasps:
    """One right hand per entry of `families` (N,), ids into `GRASP_FAMILIES`: angles and objects.

    Solved per family in chunks of 4096 hands, each drawn from its own seed (seed, family, chunk), so the
    result depends on (families, seed) only, not on `workers` (threads; default: the CPUs, at most 4)."""
    families = np.asarray(families)
    n = len(families)
    tasks = [(f, np.flatnonzero(families == f)[start:start + _CHUNK], start // _CHUNK)
             for f in range(len(GRASP_FAMILIES)) for start in range(0, int(np.sum(families == f)), _CHUNK)]

    def solve(task):
        f, rows, chunk = task
        return _solve_family(GRASP_FAMILIES[f], len(rows), np.random.default_rng([seed, f, chunk]))

    angles = np.zeros((n, 15, 3))
    center, axis, radius = np.full((n, 3), np.nan), np.full((n, 3), np.nan), np.full(n, np.nan)
    workers = workers or min(os.cpu_count() or 1, 4)
    with _one_intra_op_thread(), ThreadPoolExecutor(workers) as pool:  # torch ops release the GIL
        for (f, rows, _), (solved, obj) in zip(tasks, pool.map(solve, tasks)):
            angles[rows] = solved.permute(3, 2, 0, 1).reshape(len(rows), 15, 3).double().numpy()
            for key, out in (("center", center), ("axis", axis), ("radius", radius)):
                if key in obj:
                    out[rows] = obj[key].double().numpy().T
    return Grasps(angles=np.clip(angles, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]), center=center, axis=axis, radius=radius)


def make_grasp_poses(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` grasp poses (n, 90) float32 [left 45 | right 45] and families (n, 2) int64 [left, right], ids
    into `GRASP_FAMILIES`; half the samples hold one family in both hands. Same contract as `make_hand_poses`."""
    rng = np.random.default_rng(seed)
    families = rng.integers(len(GRASP_FAMILIES), size=(n, 2))
    same = rng.random(n) < 0.5  # half the samples: both hands in the same grasp
    families[same, 0] = families[same, 1]
    grasps = solve_grasps(np.concatenate([families[:, 0], families[:, 1]]), seed=int(rng.integers(2**31)))
    aa = angles_to_axis_angle(grasps.angles).reshape(2, n, 15, 3)
    poses = np.concatenate([mirror(aa[0]).reshape(n, 45), aa[1].reshape(n, 45)], axis=1).astype(np.float32)
    return poses, families.astype(np.int64)
