"""dtm-lunar and training a DTM from any iterator: a stream of LunarLander-v3 frames (gymnasium, Box2D).

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
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from genflow.config import load_config
from genflow.engine import start_run
from genflow.errors import ConfigError, DataSourceError
from genflow_recipes.dtm.recipe import DtmConfig, DtmEvalOptions, DtmRecipe, _Images
from genflow_recipes.dtm.card import LUNAR_CARD

__all__ = ["LunarLanderFrames", "require_gymnasium", "DtmLunarRecipe", "train_from_iterator"]


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


# --- training from an iterator ---------------------------------------------------------------------------
class _IterableImages(IterableDataset):
    """A re-iterable stream of {"image", "label"} from a factory of image iterators."""

    def __init__(self, factory: Callable[[], Iterable]):
        self.factory = factory

    def __iter__(self):
        for item in self.factory():
            if isinstance(item, dict):
                yield {"image": torch.as_tensor(item["image"]), "label": torch.as_tensor(item.get("label", 0))}
            else:
                image = item[0] if isinstance(item, (tuple, list)) else item
                yield {"image": torch.as_tensor(np.asarray(image)), "label": torch.tensor(0)}


class DtmLunarRecipe(DtmRecipe):
    """Unconditioned DTM trained from a stream of LunarLander-v3 frames (32 x 32 RGB, binarised)."""

    card = LUNAR_CARD
    stream_factory: Callable[[], Iterable] | None = None  # set by train_from_iterator
    data_path_key = None  # frames come from a stream, not a dataset directory

    def image_shape(self) -> tuple[int, ...]:
        d = self.config.data
        return tuple(d.image_shape) if d.image_shape else (d.resolution, d.resolution, 3)

    def num_classes(self) -> int:
        return 1

    def _frames(self, seed: int, max_frames: int | None = None) -> IterableDataset:
        require_gymnasium()
        d = self.config.data
        return LunarLanderFrames(d.resolution, seed, d.frame_skip, d.random_action_prob, max_frames=max_frames)

    def build_datasets(self):
        d = self.config.data
        if d.conditional:
            raise ConfigError("config key 'data.conditional': dtm-lunar is unconditioned (frames have no labels); set it to false")
        if self.stream_factory is not None:
            train = _IterableImages(self.stream_factory)
            held_out = [next(iter(_IterableImages(self.stream_factory))) for _ in range(1)]
        else:
            train = self._frames(self.config.train.seed)
            held_out = list(self._frames(self.config.train.seed + 10_000, max_frames=d.val_images))
        val = _Images(torch.stack([h["image"] for h in held_out]), torch.zeros(len(held_out), dtype=torch.long))
        return train, val

    def eval_dtm(self, model, run_dir, device, options: DtmEvalOptions):
        """Per-step autocorrelation and a sample grid; `split` does not apply (the frames are a stream)."""
        steps, seed = options.steps, options.seed
        _, val = self.build_datasets()
        result: dict[str, Any] = {f"autocorr_step{k}": v for k, v in enumerate(self.autocorrelation(model, val, seed))}
        result.update(self.sample_grid(model, Path(run_dir) / "eval" / "dtm_samples.png", seed=seed, sweeps=steps))
        result["note"] = "no Fréchet distance: the frames have no labels to train the feature classifier"
        return result


def train_from_iterator(iterator_factory: Callable[[], Iterable], run_dir: str | Path, *, config: DtmConfig | None = None,
                        overrides: list[str] | None = None, show_progress: bool = False):
    """Train an unconditioned DTM on the images an iterator yields (arrays (H, W[, C]) uint8, or
    (image,) tuples, or {"image": ...} dicts), without a dataset on disk.

    `iterator_factory()` is called once per epoch (and once for a held-out image); an epoch ends after
    train.batches_per_epoch batches or when the iterator runs out. Image shape comes from the first item.
    """
    first = next(iter(_IterableImages(iterator_factory)))["image"]
    cfg = config or load_config(DtmConfig, DtmLunarRecipe.default_config, overrides or [])
    cfg.data.conditional = False
    cfg.data.image_shape = list(first.shape)
    recipe = DtmLunarRecipe(cfg)
    recipe.stream_factory = iterator_factory
    return start_run(recipe, run_dir, overrides=overrides, source="train_from_iterator", show_progress=show_progress)
