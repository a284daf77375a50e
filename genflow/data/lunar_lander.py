"""A stream of LunarLander-v3 frames (gymnasium, Box2D) for training from an iterator.

`LunarLanderFrames` is a torch IterableDataset: each iteration runs its own environment, flying the
lander with gymnasium's heuristic pilot plus random actions (so frames show descents, hovers,
landings and crashes), renders every `frame_skip`-th step headless (400 x 600 RGB), area-averages
it to `resolution` x `resolution` and yields ``{"image": uint8 (R, R, 3), "label": 0}``. Nothing is
kept but the current episode: memory is O(1) in the number of frames produced.

Run it in DataLoader workers (``train.num_workers >= 1``) so rendering happens in background
processes while the model trains; each worker seeds its environment with (seed, rank, worker).
Needs the optional extra: ``pip install -e .[gym]`` (gymnasium[box2d]).
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from genflow.errors import DataSourceError

__all__ = ["LunarLanderFrames", "require_gymnasium"]


def require_gymnasium():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import gymnasium
        from gymnasium.envs.box2d.lunar_lander import heuristic  # noqa: F401 (needs Box2D)
    except ImportError as err:
        raise DataSourceError(f"the LunarLander frame source needs gymnasium with Box2D ({err}); "
                              "install it with: pip install -e .[gym]") from None
    return gymnasium


class LunarLanderFrames(IterableDataset):
    """Endless LunarLander-v3 frames, downsampled to `resolution` (see the module docstring)."""

    def __init__(self, resolution: int = 32, seed: int = 0, frame_skip: int = 2, random_action_prob: float = 0.3,
                 max_frames: int | None = None, rank: int = 0):
        self.resolution, self.seed, self.frame_skip = resolution, seed, frame_skip
        self.random_action_prob, self.max_frames, self.rank = random_action_prob, max_frames, rank

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        gym = require_gymnasium()
        from gymnasium.envs.box2d.lunar_lander import heuristic

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, worker])
        env = gym.make("LunarLander-v3", render_mode="rgb_array")
        limit = None if self.max_frames is None else self.max_frames // workers + (worker < self.max_frames % workers)
        produced, step = 0, 0
        try:
            while limit is None or produced < limit:
                observation, _ = env.reset(seed=int(rng.integers(2**31)))
                done = False
                while not done and (limit is None or produced < limit):
                    if rng.random() < self.random_action_prob:
                        action = int(rng.integers(4))
                    else:
                        action = int(heuristic(env.unwrapped, observation))
                    observation, _, terminated, truncated, _ = env.step(action)
                    done = terminated or truncated
                    step += 1
                    if step % self.frame_skip:
                        continue
                    yield {"image": self.downsample(env.render()), "label": torch.tensor(0)}
                    produced += 1
        finally:
            env.close()

    def downsample(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (R, R, 3) uint8 by area averaging."""
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0).float()
        small = torch.nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        return small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
