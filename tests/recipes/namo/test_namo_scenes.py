"""Tests for genflow_recipes.namo.scenes: the procedural NAMO scene generator, its renderer and its grid planner."""

import numpy as np
import pytest

from genflow_recipes.namo.scenes import (
    CELL_PX,
    GRID,
    NPZ_KEYS,
    check_placement,
    generate_scene,
    load_movingai_map,
    make_namo_scenes,
    render_scene,
    robot_can_reach,
    scene_from_masks,
)
from genflow_recipes.namo.scenes import _window_of_map
from genflow.errors import DataSourceError
from genflow_recipes.namo.metrics import modes_hit

SEEDS = range(8)
IMAGE = GRID * CELL_PX  # 224


@pytest.fixture(scope="module", params=["many", "one"])
def scenes(request):
    """Scenes of each push task: every generator invariant below holds for both."""
    return [generate_scene(np.random.default_rng(seed), pushes=request.param) for seed in SEEDS]


def planner_view(arrays):
    """The planner's scene rebuilt from rendered masks, as the metrics see it."""
    return scene_from_masks(np.stack([arrays[key] for key in NPZ_KEYS[:5]]))


def placement_image(scene, at):
    """The target object rendered at top-left cell `at`, (224, 224) uint8."""
    return np.kron(scene.object_mask(scene.target, at=at), np.ones((CELL_PX, CELL_PX), np.uint8))


# --- generator invariants -----------------------------------------------------------------------------
def test_target_blocks_the_robot(scenes):
    for scene in scenes:
        blocked = scene.static | scene.others_mask()
        assert not robot_can_reach(blocked | scene.object_mask(scene.target), scene.robot, scene.goal)


def test_removing_the_target_frees_the_path(scenes):
    for scene in scenes:
        assert robot_can_reach(scene.static | scene.others_mask(), scene.robot, scene.goal)


def test_target_goal_is_a_valid_placement(scenes):
    for scene in scenes:
        arrays = render_scene(scene)
        check = check_placement(planner_view(arrays), arrays["target_goal"])
        assert (check.collides, check.goal_reachable, check.size_ok) == (False, True, True)


def test_leaving_the_target_in_place_is_not_valid(scenes):
    for scene in scenes:
        arrays = render_scene(scene)
        assert not check_placement(planner_view(arrays), arrays["target_object"]).valid


def test_every_listed_placement_is_valid(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes:
        view = planner_view(render_scene(scene))
        cells = np.argwhere(scene.valid_placements)
        for r, c in cells[rng.permutation(len(cells))[:5]]:
            assert check_placement(view, placement_image(scene, (r, c))).valid, (scene.objects[scene.target], r, c)


def test_target_goal_is_among_valid_placements(scenes):
    for scene in scenes:
        assert scene.valid_placements[scene.target_goal] > 0


def test_num_modes_counts_distinct_labels(scenes):
    for scene in scenes:
        labels = np.unique(scene.valid_placements[scene.valid_placements > 0])
        assert scene.num_modes == len(labels)
        assert labels.tolist() == list(range(1, scene.num_modes + 1))


def test_mode_map_holds_each_placement_mode_at_its_centre(scenes):
    for scene in scenes:
        _, _, h, w = scene.objects[scene.target]
        mode_map = scene.mode_map()
        for r, c in np.argwhere(scene.valid_placements):
            assert mode_map[r + h // 2, c + w // 2] == scene.valid_placements[r, c]
        assert np.count_nonzero(mode_map) == np.count_nonzero(scene.valid_placements)


def test_modes_hit_finds_the_ground_truth_mode(scenes):
    for scene in scenes:
        arrays = render_scene(scene)
        assert modes_hit(arrays["target_goal"], arrays["mode_map"]) == scene.valid_placements[scene.target_goal]


@pytest.mark.parametrize("pushes", ["many", "one"])
def test_scenes_are_multi_modal(pushes):
    modes = [generate_scene(np.random.default_rng(100 + seed), pushes=pushes).num_modes for seed in range(20)]
    assert max(modes) >= 2


# --- rendering and writing ----------------------------------------------------------------------------
def test_render_scene_gives_the_source_keys_as_float_masks(scenes):
    arrays = render_scene(scenes[0])
    assert set(arrays) == {*NPZ_KEYS, "num_modes", "mode_map"}
    for key in NPZ_KEYS:
        assert arrays[key].shape == (IMAGE, IMAGE) and arrays[key].dtype == np.float32
        assert set(np.unique(arrays[key]).tolist()) <= {0.0, 1.0}
    assert int(arrays["num_modes"]) == scenes[0].num_modes
    assert arrays["mode_map"].shape == (GRID, GRID)


def load_dir(directory):
    out = {}
    for path in sorted(directory.glob("*.npz")):
        with np.load(path) as arrays:
            out[path.name] = {key: arrays[key] for key in arrays.files}
    return out


def assert_same_scenes(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name} {key}")


@pytest.fixture(scope="module")
def three_scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("namo") / "serial"
    make_namo_scenes(out, 3, seed=42, workers=0)
    return load_dir(out)


def test_make_namo_scenes_writes_the_same_files_with_workers(tmp_path, three_scenes):
    make_namo_scenes(tmp_path, 3, seed=42, workers=2)
    assert_same_scenes(load_dir(tmp_path), three_scenes)


def test_make_namo_scenes_scene_does_not_depend_on_count(tmp_path, three_scenes):
    make_namo_scenes(tmp_path, 2, seed=42)
    assert_same_scenes(load_dir(tmp_path), {name: three_scenes[name] for name in sorted(three_scenes)[:2]})


def test_make_namo_scenes_differs_by_seed(tmp_path, three_scenes):
    make_namo_scenes(tmp_path, 1, seed=43)
    first = load_dir(tmp_path)["scene_000000.npz"]
    assert any(not np.array_equal(first[key], three_scenes["scene_000000.npz"][key]) for key in NPZ_KEYS)


# --- layouts --------------------------------------------------------------------------------------------
def movingai_text(rows):
    return f"type octile\nheight {len(rows)}\nwidth {len(rows[0])}\nmap\n" + "\n".join(rows) + "\n"


def test_load_movingai_map_parses_walls(tmp_path):
    path = tmp_path / "tiny.map"
    path.write_text(movingai_text(["@@@@", "@..@", "@.@@", "@@@@"]))
    expected = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(load_movingai_map(path), expected)


def test_load_movingai_map_rejects_a_malformed_file(tmp_path):
    path = tmp_path / "broken.map"
    path.write_text("type octile\nheight four\nwidth 4\nmap\n@@@@\n")
    with pytest.raises(DataSourceError, match="broken.map"):
        load_movingai_map(path)


def rooms_map():
    """16 x 16 MovingAI-style map: four rooms joined by 1-cell doors (2 cells once upscaled)."""
    rows = []
    for r in range(16):
        if r in (0, 15):
            row = "@" * 16
        elif r == 8:
            row = "@@@.@@@@@@@@.@@@"
        else:
            row = "@......." + ("." if r in (4, 11) else "@") + "......@"
        rows.append(row)
    return movingai_text(rows)


def test_generate_scene_on_a_movingai_layout_is_valid():
    rng = np.random.default_rng(0)
    layout = _window_of_map(load_movingai_map("rooms.map", rooms_map()), rng)
    scene = generate_scene(rng, layout, "rooms", attempts=50)
    arrays = render_scene(scene)
    assert np.array_equal(scene.static, layout) and scene.layout == "rooms"
    assert check_placement(planner_view(arrays), arrays["target_goal"]).valid


def test_generate_scene_without_free_paths_raises():
    walls = np.ones((GRID, GRID), bool)
    walls[2:4, 2:4] = walls[10:12, 20:22] = walls[20:23, 5:8] = False  # isolated pockets
    with pytest.raises(DataSourceError, match="no NAMO scene.*'pockets'.*doors or corridors"):
        generate_scene(np.random.default_rng(0), walls, "pockets", attempts=5)


# --- planner ---------------------------------------------------------------------------------------------
def corridor(gap_rows=None):
    """Walls everywhere but a 4-cell-high corridor (rows 10-13); a wall across it at column 15 when
    `gap_rows` is given, open only at those rows."""
    walls = np.ones((GRID, GRID), bool)
    walls[10:14, 1:GRID - 1] = False
    if gap_rows is not None:
        walls[10:14, 15] = True
        walls[list(gap_rows), 15] = False
    return walls


ROBOT, GOAL = (11, 2), (11, 27)


def test_robot_reaches_along_an_open_corridor():
    assert robot_can_reach(corridor(), ROBOT, GOAL)


def test_robot_is_stopped_by_a_wall_across_the_corridor():
    assert not robot_can_reach(corridor(gap_rows=()), ROBOT, GOAL)


def test_robot_does_not_fit_through_a_one_cell_gap():
    assert not robot_can_reach(corridor(gap_rows=(12,)), ROBOT, GOAL)


def test_robot_fits_through_a_two_cell_gap():
    assert robot_can_reach(corridor(gap_rows=(11, 12)), ROBOT, GOAL)


# --- fresh valid placements for training ------------------------------------------------------------------
def test_draw_valid_placements_gives_every_valid_placement_and_only_those(scenes):
    import torch

    from genflow_recipes.namo.scenes import draw_valid_placements

    for scene in scenes[:4]:
        arrays = render_scene(scene, image_size=64)
        count = int((scene.valid_placements > 0).sum())
        uniform = (torch.arange(count) + 0.5) / count  # one draw per placement
        batch = lambda a: torch.from_numpy(np.repeat(a[None], count, axis=0))  # noqa: E731
        drawn = draw_valid_placements(batch(arrays["target_object"]), batch(arrays["mode_map"]), uniform,
                                      batch(arrays["target_goal"])).numpy()
        view = scene_from_masks(np.stack([arrays[key] for key in NPZ_KEYS[:5]]))
        assert len({d.tobytes() for d in drawn}) == count  # all distinct: every placement once
        assert any((d == arrays["target_goal"].astype(bool)).all() for d in drawn)  # the stored one among them
        for d in drawn:
            assert check_placement(view, d).valid and modes_hit(d, arrays["mode_map"]) > 0


def test_draw_valid_placements_keeps_the_stored_goal_without_known_placements(scenes):
    import torch

    from genflow_recipes.namo.scenes import draw_valid_placements

    arrays = render_scene(scenes[0], image_size=64)
    target, goal = torch.from_numpy(arrays["target_object"])[None], torch.from_numpy(arrays["target_goal"])[None]
    drawn = draw_valid_placements(target, torch.zeros(1, GRID, GRID, dtype=torch.uint8), torch.tensor([0.3]), goal)
    assert torch.equal(drawn, goal.bool())
