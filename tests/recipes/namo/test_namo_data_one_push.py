"""`genflow data make namo pushes=one`: goals the target reaches with one straight push (the source's one-push data)."""

import numpy as np
import pytest

from genflow.config import load_options
from genflow.data.registry import DataJob, get_data_command
from genflow.errors import ConfigError, DataSourceError
from genflow_recipes.namo.scenes import GRID, _valid_placements, generate_scene, make_namo_scenes

ROOM = np.zeros((GRID, GRID), bool)
ROOM[0, :] = ROOM[-1, :] = ROOM[:, 0] = ROOM[:, -1] = True  # walls round an empty room
FAR_ROBOT, FAR_GOAL = (25, 3), (25, 27)  # away from the object: the goal is always reachable


def placements(target, pushes, max_pushes=3):
    valid = _valid_placements(ROOM, target, FAR_ROBOT, FAR_GOAL, max_pushes, pushes)
    return {(int(r), int(c)) for r, c in np.argwhere(valid)}


def test_one_push_in_an_open_room_gives_the_four_straight_rays():
    rays = {(10 + k * dr, 10 + k * dc) for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)) for k in (1, 2, 3)}
    assert placements((10, 10, 2, 2), "one") == rays


def test_many_pushes_in_an_open_room_reach_every_cell_within_max_pushes():
    diamond = {(10 + dr, 10 + dc) for dr in range(-3, 4) for dc in range(-3, 4) if 0 < abs(dr) + abs(dc) <= 3}
    assert placements((10, 10, 2, 2), "many") == diamond


def test_one_push_needs_room_behind_the_object():
    # Against the top wall the robot cannot stand above the object, so it cannot push it down.
    assert placements((1, 10, 2, 3), "one") == {(1, 10 + k) for k in (-3, -2, -1, 1, 2, 3)}


def test_one_push_placements_are_straight_collision_free_sweeps_among_the_many_push_ones():
    for seed in range(6):
        scene = generate_scene(np.random.default_rng(seed), pushes="one", max_pushes=6)
        r0, c0, h, w = scene.objects[scene.target]
        blocked = scene.static | scene.others_mask()
        many = _valid_placements(blocked, (r0, c0, h, w), scene.robot, scene.goal, 6, "many")
        for r, c in np.argwhere(scene.valid_placements):
            assert (r == r0) != (c == c0) and abs(r - r0) + abs(c - c0) <= 6, (seed, r, c)
            swept = np.zeros_like(blocked)
            swept[min(r, r0) : max(r, r0) + h, min(c, c0) : max(c, c0) + w] = True
            assert not (swept & blocked).any(), (seed, r, c)
            assert many[r, c], (seed, r, c)


def test_one_push_scenes_are_deterministic_given_seed_and_index(tmp_path):
    make_namo_scenes(tmp_path / "a", 3, seed=5, pushes="one")
    make_namo_scenes(tmp_path / "b", 3, seed=5, pushes="one", workers=2)
    for i in range(3):
        with np.load(tmp_path / "a" / f"scene_{i:06d}.npz") as a, np.load(tmp_path / "b" / f"scene_{i:06d}.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_an_unknown_push_task_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'pushes': expected 'many' \\| 'one', got 'two'"):
        load_options(get_data_command("make", "namo").options, ["pushes=two"], "data make namo option")
    with pytest.raises(DataSourceError, match="pushes='two'"):
        make_namo_scenes(tmp_path, 1, pushes="two")


def test_the_data_command_passes_pushes_on(tmp_path):
    command = get_data_command("make", "namo")
    options = command.options(scenes=2, out=str(tmp_path / "one"), pushes="one", max_pushes=4)
    result = command.run(options, DataJob(command="test", progress=lambda done, total: None))
    assert result["wrote"].startswith("2 scenes")
    expected = make_namo_scenes(tmp_path / "direct", 2, pushes="one", max_pushes=4)
    assert result["valid placement modes per scene (count: scenes)"] == expected["num_modes"]
