"""Hypothesis selection: the estimator-like hypotheses of a held-out pose and the scores of a prior's pick."""

import numpy as np
import pytest

from genflow_recipes.hand_vae.skeleton import inside_limits, make_hand_poses
from genflow_recipes.hand_vae.metrics import (HYPOTHESIS_KINDS, estimator_like_error, hypothesis_errors, make_hypotheses,
                                        select_hypotheses)


@pytest.fixture(scope="module")
def held_out():
    poses, families = make_hand_poses(60, seed=4)
    hypotheses, kinds = make_hypotheses(poses, families, np.random.default_rng(0))
    return poses, families, hypotheses, kinds


def test_hypotheses_have_one_row_per_kind_and_index_0_is_the_truth(held_out):
    poses, _, hypotheses, kinds = held_out
    assert hypotheses.shape == (60, len(HYPOTHESIS_KINDS), 90) and kinds == list(HYPOTHESIS_KINDS)
    assert kinds[0] == "true" and np.array_equal(hypotheses[:, 0], poses)
    errors = hypothesis_errors(poses, hypotheses)
    assert errors[:, 0].max() < 1e-2 and (errors[:, 1:] > 0.5).mean() > 0.95


def test_swapping_the_hands_twice_gives_the_pose_back(held_out):
    poses, _, hypotheses, kinds = held_out
    swapped = hypotheses[:, kinds.index("swap")]
    again, _ = make_hypotheses(swapped, None, np.random.default_rng(1))
    assert np.allclose(again[:, kinds.index("swap")], poses)
    assert inside_limits(swapped).all()  # each hand's articulation moves to the other side, still a valid hand


def test_impossible_hypotheses_leave_the_limits(held_out):
    _, _, hypotheses, kinds = held_out
    for k in np.flatnonzero(np.array(kinds) == "joint_limits"):
        assert not inside_limits(hypotheses[:, k]).all(1).any()


def test_other_family_hypothesis_is_a_pose_of_another_right_hand_family(held_out):
    poses, families, hypotheses, kinds = held_out
    other = hypotheses[:, kinds.index("other_family")]
    source = np.array([np.flatnonzero((poses == row).all(1))[0] for row in other])
    assert (source != np.arange(60)).all() and (families[source, 1] != families[:, 1]).all()


def test_estimator_errors_grow_with_their_size(held_out):
    poses = held_out[0]
    rng = np.random.default_rng(2)
    means = [hypothesis_errors(poses, estimator_like_error(poses, size, rng)[:, None])[:, 0].mean() for size in (5, 10, 20)]
    assert means[0] < means[1] < means[2]
    assert np.allclose(means, [5, 10, 20], rtol=0.15)  # the size is the expected mean per-joint error


def test_selection_scores_the_best_the_uniform_and_the_worst_pick():
    rng = np.random.default_rng(3)
    errors = rng.uniform(1, 30, size=(40, 6))
    errors[:, 0] = 0.0  # the truth
    kinds = ["true", "a", "a", "b", "b", "c"]
    best = select_hypotheses(errors, errors, kinds)
    assert best["top1"] == 1.0 and best["picked_deg"] == best["oracle_deg"] == 0.0 and best["pick_true"] == 1.0
    uniform = select_hypotheses(np.full((40, 6), 7.0), errors, kinds)
    assert uniform["top1"] == pytest.approx(1 / 6) and uniform["picked_deg"] == pytest.approx(errors.mean())
    assert uniform["pick_a"] == pytest.approx(2 / 6) and uniform["pick_c"] == pytest.approx(1 / 6)
    worst = select_hypotheses(-errors, errors, kinds)
    assert worst["top1"] == 0.0 and worst["picked_deg"] == pytest.approx(errors.max(1).mean()) and worst["pick_true"] == 0.0
    estimator = select_hypotheses(errors[:, 1:], errors[:, 1:])  # without the truth: top-1 = the lowest-error pick
    assert estimator["top1"] == 1.0 and estimator["oracle_deg"] > 0
    assert estimator["picked_deg"] == pytest.approx(errors[:, 1:].min(1).mean())
