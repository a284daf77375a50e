"""Tests for genflow_recipes.namo.poses (the source's goal poses without OpenCV) and proposal_metrics."""

import json
import math

import numpy as np
import pytest

from genflow_recipes.namo.metrics import placement_metrics, proposal_metrics
from genflow_recipes.namo.poses import (accept_proposals, footprint_at_pose, mask_pose, min_area_rectangle,
                                        propose_goal_poses)


def bar(r, c, h, w, side=64):
    mask = np.zeros((side, side), bool)
    mask[r : r + h, c : c + w] = True
    return mask


def turned_rectangle(cx, cy, length, width, theta, side=64):
    """The pixels whose centre lies in a rectangle of long side `length` at angle `theta`."""
    ys, xs = np.mgrid[0:side, 0:side]
    along = np.cos(theta) * (xs - cx) + np.sin(theta) * (ys - cy)
    across = -np.sin(theta) * (xs - cx) + np.cos(theta) * (ys - cy)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


# --- minimum-area rectangle and the pose convention -------------------------------------------------------
def test_min_area_rectangle_recovers_a_turned_rectangle():
    mask = turned_rectangle(30.3, 25.6, 24, 8, 0.5)
    rows, cols = np.nonzero(mask)
    centre, size, angle = min_area_rectangle(np.stack([cols, rows], axis=1))
    np.testing.assert_allclose(centre, [30.3, 25.6], atol=1.0)
    np.testing.assert_allclose(size, [23, 7], atol=1.5)  # spans pixel centres: about one pixel less per side
    assert angle == pytest.approx(0.5, abs=math.radians(3))


def test_min_area_rectangle_of_exact_corners_is_exact():
    centre, size, angle = min_area_rectangle(np.array([[0, 0], [8, 6], [5, 10], [-3, 4]], float))  # 10 x 5
    np.testing.assert_allclose(centre, [2.5, 5.0])
    np.testing.assert_allclose(size, [10, 5])
    assert angle == pytest.approx(math.atan2(6, 8))


def test_a_wide_rectangle_has_theta_zero():
    assert mask_pose(bar(10, 20, 2, 6)) == pytest.approx([22.5, 10.5, 0.0])


def test_a_tall_rectangle_has_theta_minus_half_pi():
    assert mask_pose(bar(10, 20, 6, 2)) == pytest.approx([20.5, 12.5, -math.pi / 2])


def test_a_square_takes_the_side_nearest_the_x_axis():
    assert mask_pose(bar(10, 20, 4, 4))[2] == 0.0
    diamond = np.array([[2, 0], [4, 2], [2, 4], [0, 2]], float)  # a square turned by 45 degrees
    assert min_area_rectangle(diamond).angle == pytest.approx(-math.pi / 4)


# --- which samples the source keeps -------------------------------------------------------------------------
def test_empty_and_two_blob_samples_are_rejected_an_l_shape_accepted():
    l_shape = bar(10, 10, 6, 2) | bar(14, 10, 2, 6)
    two_blobs = bar(10, 10, 2, 2) | bar(30, 30, 2, 2)
    proposals = accept_proposals(np.stack([np.zeros((64, 64), bool), two_blobs, l_shape])[None])
    assert proposals.accepted.tolist() == [[False, False, True]]
    assert proposals.components.tolist() == [[0, 2, 1]]


def test_a_diagonal_touch_is_one_component():
    diagonal = bar(10, 10, 2, 2) | bar(12, 12, 2, 2)  # corners touch: 8-connected, one blob
    assert accept_proposals(diagonal[None, None]).accepted[0, 0]


def test_rejected_samples_have_nan_poses_and_rates_are_per_scene():
    samples = np.stack([np.stack([bar(10, 10, 2, 6), np.zeros((64, 64), bool)]),
                        np.stack([bar(10, 10, 2, 6), bar(40, 40, 3, 3)])])
    proposals = accept_proposals(samples)
    assert np.isnan(proposals.poses[0, 1]).all() and not np.isnan(proposals.poses[1]).any()
    assert proposals.acceptance_rate.tolist() == [0.5, 1.0]


def test_propose_goal_poses_keeps_the_accepted_samples_and_their_indices():
    class FixedRecipe:
        def generate(self, model, context, *, samples_per_scene, solver, steps, seed):
            assert tuple(context.shape) == (1, 5, 64, 64) and samples_per_scene == 3
            return np.stack([np.zeros((64, 64), bool), bar(10, 20, 2, 6), bar(10, 20, 6, 2)])[None], 1

    (scene,) = propose_goal_poses(FixedRecipe(), None, np.zeros((1, 5, 64, 64), np.uint8), samples_per_scene=3)
    assert scene.indices.tolist() == [1, 2] and scene.acceptance_rate == pytest.approx(2 / 3)
    np.testing.assert_allclose(scene.poses, [[22.5, 10.5, 0.0], [20.5, 12.5, -math.pi / 2]])


# --- the target's footprint at a pose ----------------------------------------------------------------------
def test_the_target_at_its_own_pose_is_the_target():
    target = bar(17, 9, 3, 5) | bar(20, 9, 2, 2)  # an L: not symmetric, so a wrong turn or shift shows
    assert np.array_equal(footprint_at_pose(target, mask_pose(target)), target)


def test_a_quarter_turn_makes_a_2x6_bar_6x2():
    footprint = footprint_at_pose(bar(10, 20, 2, 6), [30.5, 40.5, -math.pi / 2])
    assert np.array_equal(footprint, bar(38, 30, 6, 2))


def test_a_turned_footprint_lies_along_the_poses_theta():
    footprint = footprint_at_pose(bar(10, 20, 4, 20), [32.0, 32.0, 0.6])
    assert mask_pose(footprint) == pytest.approx([32.0, 32.0, 0.6], abs=math.radians(4))


def test_footprint_pixels_outside_the_image_are_cut():
    footprint = footprint_at_pose(bar(10, 20, 2, 6), [0.5, 30.5, 0.0])  # centred one pixel from the left edge
    assert np.array_equal(footprint, bar(30, 0, 2, 4))


# --- proposal_metrics on a hand-built scene -----------------------------------------------------------------
# As in test_namo_metrics: 32 x 32 cells at 2 px, a corridor (rows 10-12) blocked by a 3 x 2-cell target at
# (10, 15), with an alcove above (rows 6-9) and below (rows 13-16) it at columns 14-17; robot (10, 2), goal (10, 27).
def cells(r, c, h, w):
    grid = np.zeros((32, 32), bool)
    grid[r : r + h, c : c + w] = True
    return np.kron(grid, np.ones((2, 2), bool))


ABOVE = cells(7, 15, 3, 2)


@pytest.fixture(scope="module")
def scene():
    walls = np.ones((32, 32), bool)
    walls[10:13, 1:31] = False
    walls[6:10, 14:18] = walls[13:17, 14:18] = False
    target = cells(10, 15, 3, 2)
    context = np.stack([cells(10, 2, 2, 2), cells(10, 27, 2, 2), target, np.kron(walls, np.ones((2, 2), bool)), target])
    mode_map = np.zeros((32, 32), np.uint8)
    mode_map[8, 16], mode_map[14, 16] = 1, 2
    return {"context": context[None].astype(np.uint8), "truth": ABOVE[None], "num_modes": np.array([2]),
            "mode_map": mode_map[None]}


def both_metrics(scene, *samples):
    args = (scene["context"], scene["truth"], np.stack(samples)[None], scene["num_modes"], scene["mode_map"])
    return placement_metrics(*args), proposal_metrics(*args)


def test_a_fragmented_sample_is_not_a_proposal(scene):
    fragmented = ABOVE | cells(11, 22, 1, 1)  # the right placement plus a speck in the corridor
    raw, proposals = both_metrics(scene, ABOVE, fragmented)
    assert raw["validity"] == 0.5  # the speck blocks the robot's way
    assert (proposals["validity"], proposals["acceptance_rate"], proposals["iou"]) == (1.0, 0.5, 1.0)


def test_a_proposal_is_the_targets_footprint_at_the_pose(scene):
    thin = bar(15, 31, 4, 2)  # a 1 x 2-cell bar where ABOVE is centred, upright as the target
    raw, proposals = both_metrics(scene, thin)
    assert raw["validity"] == 0.0  # too small to be the object
    assert (proposals["validity"], proposals["push_validity"], proposals["iou"]) == (1.0, 1.0, 1.0)


def test_a_scene_without_accepted_samples_has_no_valid_sample(scene):
    _, proposals = both_metrics(scene, np.zeros((64, 64), bool))
    assert (proposals["acceptance_rate"], proposals["valid_scene_rate"], proposals["mode_coverage"]) == (0.0, 0.0, 0.0)
    assert proposals["best_of_k_iou"] == 0.0 and np.isnan(proposals["validity"])


# --- the recipe's sample poses=true and eval namo ---------------------------------------------------------
@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from genflow.cli import main
    from genflow.config import load_config
    from genflow.engine.recipe import get_recipe

    root = tmp_path_factory.mktemp("namo-poses")
    assert main(["data", "make-namo", "--scenes", "12", "--out", str(root / "npz"), "--seed", "5"]) == 0
    assert main(["data", "import-npz", str(root / "npz"), "--kind", "namo", "--out", str(root / "shards"),
                 "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    cls = get_recipe("namo-fm")
    return cls(load_config(cls.config_class, None, [f"data.data_dir={root / 'shards'}"]))


@pytest.fixture
def one_of_two_kept(recipe, monkeypatch):
    """generate -> per scene its true placement (kept) and the same with a far copy (two blobs: dropped)."""
    def generate(model, context, *, samples_per_scene, solver=None, steps=None, seed=0):
        goals = recipe._test_scenes()["target_goal"][: len(context), 0] > 0  # sample and eval read these scenes
        return np.stack([goals, goals | np.roll(goals, (32, 32), axis=(1, 2))], axis=1), 1

    monkeypatch.setattr(recipe, "generate", generate)
    return recipe


def test_sample_with_poses_writes_the_accepted_poses(one_of_two_kept, tmp_path):
    from genflow_recipes.namo.recipe import NamoSampleOptions

    result = one_of_two_kept.sample(None, tmp_path, "cpu", NamoSampleOptions(n=2, samples_per_scene=2, poses=True,
                                                                             out=str(tmp_path / "s.png")))
    arrays = np.load(tmp_path / "s.npz")
    assert arrays["accepted"].tolist() == [[True, False]] * 2 and result["acceptance_rate"] == 0.5
    assert np.isnan(arrays["poses"][:, 1]).all() and arrays["acceptance_rate"].tolist() == [0.5, 0.5]
    table = json.loads((tmp_path / "s-poses.json").read_text())
    assert [s["samples"] for s in table["scenes"]] == [[0], [0]]
    np.testing.assert_allclose([s["poses"][0] for s in table["scenes"]], arrays["poses"][:, 0], atol=1e-4)
    assert (tmp_path / "s-poses.png").is_file()


def test_eval_namo_reports_the_metrics_of_proposals_too(one_of_two_kept, tmp_path):
    from genflow_recipes.namo.recipe import NamoEvalOptions

    options = NamoEvalOptions(limit=2, samples_per_scene=2, figure=False)
    result = one_of_two_kept.eval_namo(None, tmp_path, "cpu", options)
    assert result["proposals_acceptance_rate"] == 0.5 and "validity" in result  # the raw metrics stay
    assert result["proposals_validity"] == 1.0 and result["proposals_iou"] == 1.0  # the kept ones: the true placements
    keys = ("push_validity", "best_of_k_iou", "mode_coverage", "valid_scene_rate")
    assert {f"proposals_{k}" for k in keys} <= set(result)
