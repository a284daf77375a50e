"""Optional dependencies: a missing one is one line naming the genflow extra that installs it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from genflow.errors import GenflowError
from genflow.extras import import_optional
from genflow_recipes.mmnist_wm.metrics import frame_ssim
from genflow.objectives import DiffusionObjective
from genflow.samplers import sample_diffusion


def hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `import package` (and its submodules) raise ImportError, as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def assert_one_line(excinfo: pytest.ExceptionInfo, expected: str) -> None:
    message = str(excinfo.value)
    assert message == expected
    assert "\n" not in message


def test_missing_diffusers_names_the_diffusion_extra(monkeypatch):
    hide(monkeypatch, "diffusers")
    with pytest.raises(GenflowError) as excinfo:
        DiffusionObjective()
    assert_one_line(excinfo, "DDPM / DDIM diffusion (namo-diffusion) needs diffusers: pip install 'genflow[diffusion]'")


def test_diffusion_sampler_without_diffusers_names_the_diffusion_extra(monkeypatch):
    objective = DiffusionObjective(num_train_timesteps=10)
    hide(monkeypatch, "diffusers")
    with pytest.raises(GenflowError) as excinfo:
        sample_diffusion(lambda x, t: x, (1, 2), objective, steps=2)
    assert_one_line(excinfo, "DDPM / DDIM diffusion (namo-diffusion) needs diffusers: pip install 'genflow[diffusion]'")


def test_missing_scikit_image_names_the_video_extra(monkeypatch):
    hide(monkeypatch, "skimage")
    frames = np.zeros((1, 2, 8, 8))
    with pytest.raises(GenflowError) as excinfo:
        frame_ssim(frames, frames)
    assert_one_line(excinfo, "SSIM (mmnist-wm video metrics) needs scikit-image: pip install 'genflow[video]'")


def test_installed_package_that_fails_to_import_keeps_its_error(tmp_path, monkeypatch):
    (tmp_path / "genflow_test_broken_extra.py").write_text("import genflow_test_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="genflow_test_not_installed"):
        import_optional("genflow_test_broken_extra", extra="x", needed_by="y")
    monkeypatch.delitem(sys.modules, "genflow_test_broken_extra", raising=False)


def test_installed_package_is_returned():
    assert import_optional("torch", extra="x", needed_by="y") is torch
