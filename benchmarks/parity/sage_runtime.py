"""What sage_learning (the source of namo-fm / namo-diffusion) needs to run from a local checkout on a CPU.

The source imports torchvision for three transforms of its data loader (ToTensor, Resize, a Lambda)
and `make_grid` for its W&B pictures. PyPI has no torchvision wheel built for the CPU torch these
benchmarks use (the CUDA one fails to import beside it), so where `import torchvision` fails this
installs a stand-in module with those four names, written from torchvision's documented behaviour:
ToTensor turns an (H, W, C) array into a (C, H, W) float tensor and divides uint8 by 255; Resize
of a tensor is bilinear interpolation with antialiasing (torchvision's default for tensors).
Nothing here is the source's code; genflow never imports it.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["install_torchvision_standin", "add_source_to_path", "step_timer"]


class _Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


class _ToTensor:
    def __call__(self, array):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if tensor.dtype == torch.uint8:
            return tensor.float().div(255)
        return tensor


class _Resize:
    def __init__(self, size):
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def __call__(self, tensor):
        if tuple(tensor.shape[-2:]) == self.size:
            return tensor
        out = F.interpolate(tensor[None].float(), size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out[0].to(tensor.dtype)


class _Lambda:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)


def _make_grid(images, nrow=8, padding=2, normalize=False, **_):
    images = torch.as_tensor(images)
    if normalize:
        images = (images - images.min()) / (images.max() - images.min()).clamp(min=1e-5)
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = (n + cols - 1) // cols
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, padding + r * (h + padding): padding + r * (h + padding) + h,
             padding + k * (w + padding): padding + k * (w + padding) + w] = images[i]
    return grid


def install_torchvision_standin() -> bool:
    """Install the stand-in as `torchvision` if the real one does not import; True if it did."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:  # missing, or a wheel built for another torch (RuntimeError at import)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    # these libraries probe for torchvision when imported: let them find none, then add the stand-in
    for probing in ("lightning.pytorch", "torchmetrics", "diffusers", "flow_matching"):
        try:
            __import__(probing)
        except ImportError:
            pass
    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose, transforms.ToTensor, transforms.Resize, transforms.Lambda = _Compose, _ToTensor, _Resize, _Lambda
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = _make_grid
    package.transforms, package.utils = transforms, utils
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms, "torchvision.utils": utils})
    return True


def add_source_to_path(source: Path) -> Path:
    """Check that `source` is a sage_learning checkout and put it first on sys.path (it imports as `src`)."""
    source = Path(source).resolve()
    if not (source / "src" / "model" / "dit" / "dit.py").is_file():
        raise SystemExit(f"{source}: not a sage_learning checkout (no src/model/dit/dit.py)")
    sys.path.insert(0, str(source))
    return source


def step_timer(path: str):
    """A Lightning callback (the side-by-side benchmark's trainer config builds it through Hydra) that writes the
    intervals between the ends of consecutive training steps to `path` (JSON) when training ends: the source's
    time per step, data loading included, validation not."""
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.ends.append(time.perf_counter())

        def on_train_end(self, *args, **kwargs) -> None:
            Path(path).write_text(json.dumps(np.diff(self.ends).tolist()))

    return StepTimer()
