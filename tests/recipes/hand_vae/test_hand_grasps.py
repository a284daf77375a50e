"""The grasps generator: limits, families, contacts, its torch kinematics, determinism, non-linearity."""

import json

import numpy as np
import pytest
import torch

from genflow_recipes.hand_vae.grasps import GRASP_FAMILIES, joint_positions_from_angles, make_grasp_poses, solve_grasps
from genflow_recipes.hand_vae.skeleton import (FAMILIES, JOINT_LIMITS, angles_to_axis_angle, mirror, hand_joint_positions, inside_limits,
                                joint_angles, make_hand_poses)
from genflow_recipes.hand_vae.dataset import make_hands_dataset

INDEX, MIDDLE, THUMB = 0, 1, 4


def _family(name: str) -> int:
    return GRASP_FAMILIES.index(name)


def test_grasp_poses_respect_limits_and_cover_every_family():
    poses, families = make_grasp_poses(600, seed=0)
    assert poses.shape == (600, 90) and poses.dtype == np.float32 and families.shape == (600, 2) and families.dtype == np.int64
    assert inside_limits(poses).all()
    assert set(np.unique(families)) == set(range(len(GRASP_FAMILIES)))
    assert 0.4 < np.mean(families[:, 0] == families[:, 1]) < 0.7  # half the samples share a family, others by chance


def test_torch_kinematics_match_hand_joint_positions():
    rng = np.random.default_rng(0)
    angles = rng.uniform(JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1], (16, 15, 3))
    ours = joint_positions_from_angles(torch.from_numpy(angles)).numpy()
    aa = angles_to_axis_angle(angles).reshape(16, 45)
    for i in range(16):
        np.testing.assert_allclose(ours[i], hand_joint_positions(aa[i]), atol=1e-9)
        mirrored = hand_joint_positions(mirror(aa[i].reshape(15, 3)).ravel(), left=True)  # the left hand: the mirror image
        np.testing.assert_allclose(mirrored, ours[i] * np.array([1.0, -1.0, 1.0]), atol=1e-9)


def test_chain_jacobian_matches_autograd():
    from genflow_recipes.hand_vae.grasps import _UNKNOWNS, _chain, _jacobians, _with_unknowns

    rng = np.random.default_rng(1)
    lim = JOINT_LIMITS.reshape(5, 3, 3, 2)
    fixed = torch.from_numpy(rng.uniform(lim[..., 0], lim[..., 1], (3, 5, 3, 3))).permute(2, 3, 1, 0)  # (joint, xyz, finger, hand)
    theta = torch.stack([fixed[j, c] for j, c in _UNKNOWNS])  # (5 unknowns, 5 fingers, 3 hands)
    points, frames = _chain(fixed)
    ours = _jacobians(fixed, points, frames)  # (3 xyz, 3 points, 5 unknowns, 5, 3)
    auto = torch.autograd.functional.jacobian(lambda t: torch.stack(_chain(_with_unknowns(fixed, t))[0][1:], 1), theta)
    for m in range(5):  # d point / d own finger's and hand's unknown m
        expected = torch.einsum("xpfnfn->xpfn", auto[:, :, :, :, m])
        torch.testing.assert_close(ours[:, :, m], expected, atol=1e-9, rtol=0)


def _tip_gap_to_surface(tips, grasps, cylinder: bool):
    """(N, F) |distance of each tip to the object's surface| (m)."""
    v = tips - grasps.center[:, None]
    if cylinder:
        v = v - (v * grasps.axis[:, None]).sum(-1, keepdims=True) * grasps.axis[:, None]
    return np.abs(np.linalg.norm(v, axis=-1) - grasps.radius[:, None])


def test_fingers_touch_the_objects():
    names = ("cylinder", "sphere", "pinch", "tripod")
    families = np.repeat([_family(f) for f in names], 250)
    grasps = solve_grasps(families, seed=1)
    tips = joint_positions_from_angles(grasps.angles).numpy()[:, :, 3]  # (N, 5, 3)
    for name in ("cylinder", "sphere"):
        m = families == _family(name)
        assert np.all((grasps.radius[m] > 0.011) & (grasps.radius[m] < 0.051))
        gap = _tip_gap_to_surface(tips[m], _rows(grasps, m), cylinder=name == "cylinder")
        assert np.mean(gap < 0.005) > 0.9 and np.median(gap) < 0.001, name  # all five tips, most within 5 mm
    m = families == _family("pinch")
    assert np.mean(np.linalg.norm(tips[m, INDEX] - tips[m, THUMB], axis=-1) < 0.005) > 0.95
    m = families == _family("tripod")
    grip = tips[m][:, [INDEX, MIDDLE, THUMB]]
    on_object = np.abs(np.linalg.norm(grip - grasps.center[m, None], axis=-1) - grasps.radius[m, None])
    assert np.mean(on_object < 0.003) > 0.9
    spread = np.max([np.linalg.norm(grip[:, i] - grip[:, j], axis=-1) for i, j in ((0, 1), (0, 2), (1, 2))], axis=0)
    assert np.mean(spread < 2 * grasps.radius[m] + 0.003) > 0.9  # the three tips meet around the small object
    assert np.all((2 * grasps.radius[m] > 0.0049) & (2 * grasps.radius[m] < 0.0151))


def _rows(grasps, mask):
    return type(grasps)(angles=grasps.angles[mask], center=grasps.center[mask], axis=grasps.axis[mask], radius=grasps.radius[mask])


def test_published_poses_keep_the_contacts_in_both_hands():
    poses, families = make_grasp_poses(300, seed=2)
    for hand, offset in ((0, 0), (1, 45)):
        rows = np.flatnonzero(families[:, hand] == _family("pinch"))[:20]
        gaps = [np.linalg.norm(np.subtract(*hand_joint_positions(poses[i, offset:offset + 45], left=hand == 0)[[INDEX, THUMB], 3]))
                for i in rows]
        assert len(rows) > 5 and np.median(gaps) < 0.003, hand


def test_same_seed_same_poses_whatever_the_threads():
    a, fa = make_grasp_poses(60, seed=5)
    b, fb = make_grasp_poses(60, seed=5)
    c, _ = make_grasp_poses(60, seed=6)
    assert np.array_equal(a, b) and np.array_equal(fa, fb) and not np.allclose(a, c)
    families = np.repeat(np.arange(len(GRASP_FAMILIES)), 10)
    assert np.array_equal(solve_grasps(families, seed=3, workers=1).angles, solve_grasps(families, seed=3, workers=2).angles)


def test_a_gaussian_fitted_to_pinches_does_not_pinch():
    """Contact is a curved constraint in angle space: a Gaussian fitted to pinch poses mostly parts thumb and index."""
    n = 1500
    angles = solve_grasps(np.full(n, _family("pinch")), seed=4).angles.reshape(n, 45)
    rng = np.random.default_rng(0)
    samples = rng.multivariate_normal(angles.mean(0), np.cov(angles, rowvar=False), size=n).reshape(n, 15, 3)
    samples = np.clip(samples, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1])

    def pinched(a):
        tips = joint_positions_from_angles(a).numpy()[:, :, 3]
        return np.mean(np.linalg.norm(tips[:, INDEX] - tips[:, THUMB], axis=-1) < 0.005)

    assert pinched(angles.reshape(n, 15, 3)) > 0.95 and pinched(samples) < 0.6  # measured 1.0 and 0.3-0.35


def test_four_principal_components_explain_the_old_generator_not_the_grasps():
    def explained(poses, k=4):
        a = joint_angles(poses).numpy()[:, 15:].reshape(len(poses), 45)
        ev = np.linalg.svd(a - a.mean(0), compute_uv=False) ** 2
        return ev[:k].sum() / ev.sum()

    assert explained(make_hand_poses(1000, seed=0)[0]) > 0.95  # measured 0.98
    assert explained(make_grasp_poses(1000, seed=0)[0]) < 0.9  # measured 0.84-0.85


def test_hands_dataset_records_its_generator(tmp_path):
    for generator, names in (("grasps", GRASP_FAMILIES), ("families", FAMILIES)):
        make_hands_dataset(tmp_path / generator, n=40, seed=0, generator=generator)
        attrs = json.loads((tmp_path / generator / "manifest.json").read_text())["attrs"]
        assert attrs["generator"] == generator and attrs["families"] == list(names)
    with pytest.raises(ValueError, match="grasps, families"):
        make_hands_dataset(tmp_path / "bad", n=40, generator="fists")
