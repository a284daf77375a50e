"""Tests for genflow_recipes.namo.metrics and genflow_recipes.namo.metrics on hand-made masks with known values."""

import numpy as np
import pytest

from genflow_recipes.namo.metrics import mask_dice, mask_iou
from genflow_recipes.namo.metrics import modes_hit, placement_metrics


def square(r, c, size=4, side=8):
    mask = np.zeros((side, side), bool)
    mask[r : r + size, c : c + size] = True
    return mask


# --- IoU / Dice -------------------------------------------------------------------------------------------
def test_iou_of_overlapping_squares():
    assert mask_iou(square(0, 0), square(2, 0)) == pytest.approx(8 / 24)  # overlap 2 x 4, union 24


def test_dice_of_overlapping_squares():
    assert mask_dice(square(0, 0), square(2, 0)) == pytest.approx(16 / 32)


def test_identical_masks_score_one():
    assert mask_iou(square(1, 1), square(1, 1)) == 1.0
    assert mask_dice(square(1, 1), square(1, 1)) == 1.0


def test_disjoint_masks_score_zero():
    assert mask_iou(square(0, 0), square(4, 4)) == 0.0
    assert mask_dice(square(0, 0), square(4, 4)) == 0.0


def test_two_empty_masks_score_one():
    empty = np.zeros((8, 8), bool)
    assert mask_iou(empty, empty) == 1.0
    assert mask_dice(empty, empty) == 1.0


def test_batches_are_scored_per_pair():
    pred = np.stack([square(0, 0), square(0, 0)])
    truth = np.stack([square(0, 0), square(4, 4)])
    np.testing.assert_allclose(mask_iou(pred, truth), [1.0, 0.0])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((8, 8)), np.zeros((8, 9)))


# --- a hand-built scene ---------------------------------------------------------------------------------
# 32 x 32 cells, upsampled x2 to 64 px: walls everywhere except a 3-cell-high corridor (rows 10-12) and
# two alcoves, above (rows 6-9) and below (rows 13-16) it at columns 14-17. The robot (10, 2) must reach
# its goal (10, 27); the 3 x 2 target at (10, 15) fills the corridor. Pushing it into either alcove
# frees the corridor: two modes, centred at cells (8, 16) and (14, 16).
TARGET = (3, 2)
ABOVE, BELOW, STAY, IN_WALL = (7, 15), (13, 15), (10, 15), (2, 15)


def cells_rect(r, c, h, w):
    grid = np.zeros((32, 32), bool)
    grid[r : r + h, c : c + w] = True
    return grid


def to_px(grid):
    return np.kron(grid, np.ones((2, 2), np.uint8))


def placement(at):
    return to_px(cells_rect(*at, *TARGET))


@pytest.fixture(scope="module")
def scene():
    walls = np.ones((32, 32), bool)
    walls[10:13, 1:31] = False
    walls[6:10, 14:18] = walls[13:17, 14:18] = False
    target = cells_rect(*STAY, *TARGET)
    context = np.stack([to_px(cells_rect(10, 2, 2, 2)), to_px(cells_rect(10, 27, 2, 2)), to_px(target), to_px(walls),
                        to_px(target)])
    mode_map = np.zeros((32, 32), np.uint8)
    mode_map[8, 16], mode_map[14, 16] = 1, 2
    return {"context": context[None], "truth": placement(ABOVE)[None], "num_modes": np.array([2]),
            "mode_map": mode_map[None]}


def score(scene, *samples, num_modes=None):
    num_modes = scene["num_modes"] if num_modes is None else np.array([num_modes])
    return placement_metrics(scene["context"], scene["truth"], np.stack(samples)[None], num_modes, scene["mode_map"])


def test_ground_truth_sample_scores_perfectly(scene):
    metrics = score(scene, placement(ABOVE))
    assert (metrics["iou"], metrics["dice"], metrics["validity"], metrics["valid_scene_rate"]) == (1.0, 1.0, 1.0, 1.0)


def test_the_other_alcove_is_valid_but_does_not_overlap(scene):
    metrics = score(scene, placement(BELOW))
    assert (metrics["validity"], metrics["iou"]) == (1.0, 0.0)


def test_staying_in_place_is_invalid(scene):
    metrics = score(scene, placement(STAY))
    assert (metrics["validity"], metrics["goal_reachable_rate"], metrics["collision_rate"]) == (0.0, 0.0, 0.0)


def test_overlapping_a_wall_counts_as_a_collision(scene):
    metrics = score(scene, placement(IN_WALL))
    assert (metrics["collision_rate"], metrics["validity"]) == (1.0, 0.0)


def test_best_of_k_iou_takes_the_best_sample(scene):
    metrics = score(scene, placement(STAY), placement(ABOVE))
    assert (metrics["iou"], metrics["best_of_k_iou"]) == (0.5, 1.0)


def test_mode_coverage_of_one_mode_of_two(scene):
    assert score(scene, placement(ABOVE), placement(ABOVE))["mode_coverage"] == 0.5


def test_mode_coverage_of_both_modes(scene):
    assert score(scene, placement(ABOVE), placement(BELOW))["mode_coverage"] == 1.0


def test_mode_coverage_ignores_invalid_samples(scene):
    dot_on_mode_2 = to_px(cells_rect(14, 16, 1, 1))  # centred on mode 2, but far too small to be the object
    assert score(scene, placement(ABOVE), dot_on_mode_2)["mode_coverage"] == 0.5


def test_multimodal_coverage_counts_only_scenes_with_two_or_more_modes(scene):
    assert score(scene, placement(ABOVE))["mode_coverage_multimodal"] == 0.5
    assert np.isnan(score(scene, placement(ABOVE), num_modes=1)["mode_coverage_multimodal"])


def test_mode_coverage_is_nan_without_known_modes(scene):
    assert np.isnan(score(scene, placement(ABOVE), num_modes=-1)["mode_coverage"])


# --- modes_hit --------------------------------------------------------------------------------------------
def test_modes_hit_is_zero_for_an_empty_sample(scene):
    assert modes_hit(np.zeros((64, 64), np.uint8), scene["mode_map"][0]) == 0


def test_modes_hit_is_zero_far_from_every_mode(scene):
    assert modes_hit(placement((20, 2)), scene["mode_map"][0]) == 0


def test_modes_hit_tolerates_one_cell_offset(scene):
    assert modes_hit(placement((14, 16)), scene["mode_map"][0]) == 2  # centroid cell (15, 16): one below (14, 16)


def test_modes_hit_credits_an_even_sized_placement_to_its_own_mode():
    mode_map = np.zeros((32, 32), np.uint8)
    mode_map[16, 16] = 1  # centre of a 2 x 2 placement at (15, 15)
    mode_map[17, 17] = 2  # centre of a 2 x 2 placement at (16, 16): diagonal neighbour, another mode
    assert modes_hit(to_px(cells_rect(16, 16, 2, 2)), mode_map) == 2
