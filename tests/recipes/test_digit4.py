"""digit4: the source's cloud construction, the source-model options and the loss in velocity space. Tiny sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genflow.data import images_to_point_clouds
from genflow.data.point_clouds import cloud_construction
from genflow.errors import DataSourceError
from genflow_recipes.digit4.recipe import Digit4Config, Digit4Flow, Digit4Recipe, ModelConfig, chamfer_report

SOURCE_YAML = Path(__file__).resolve().parents[2] / "recipes" / "digit4" / "configs" / "digit4_source.yaml"
TINY = {"latent_dim": 8, "encoder_hidden": (8, 16), "field_hidden": 16, "field_depth": 2, "time_dim": 8}


def _image(pixels: dict[tuple[int, int], int]) -> np.ndarray:
    image = np.zeros((1, 28, 28), np.uint8)
    for (row, col), value in pixels.items():
        image[0, row, col] = value
    return image


def test_source_clouds_use_only_pixels_above_128_at_the_source_scale():
    # one bright pixel (row 5, col 27) and a faint one (128: not above the threshold)
    image = _image({(5, 27): 200, (20, 3): 128})
    points = images_to_point_clouds(image, 4000, np.random.default_rng(0), construction="source")[0]
    centre = np.array([(27 - 13.5) / 13.5, -(5 - 13.5) / 13.5])  # the outer pixel's centre is x = 1
    assert np.allclose(points.mean(0), centre, atol=0.002)
    assert np.allclose(points.std(0), (1 / np.sqrt(12)) / 13.5, rtol=0.05)  # Gaussian jitter of a pixel's std
    # the intensity construction samples the faint pixel too, at 0.964 x the scale
    intensity = images_to_point_clouds(image, 4000, np.random.default_rng(0))[0]
    assert (intensity[:, 0] < -0.5).mean() == pytest.approx(128 / 328, abs=0.03)
    assert intensity[:, 0].max() <= 1.0 and points[:, 0].max() > 1.0


def test_source_clouds_choose_kept_pixels_uniformly_not_by_intensity():
    image = _image({(10, 7): 255, (10, 20): 129})
    rng = np.random.default_rng(1)
    right = (images_to_point_clouds(image, 6000, rng, construction="source")[0][:, 0] > 0).mean()
    right_intensity = (images_to_point_clouds(image, 6000, rng)[0][:, 0] > 0).mean()
    assert right == pytest.approx(0.5, abs=0.03)
    assert right_intensity == pytest.approx(129 / 384, abs=0.03)


def test_source_construction_rejects_an_image_with_no_pixel_above_128():
    with pytest.raises(DataSourceError, match="no pixel above 128"):
        images_to_point_clouds(_image({(3, 3): 128}), 10, np.random.default_rng(0), construction="source")


def test_noise_floor_follows_the_construction_recorded_in_the_manifest():
    assert cloud_construction({"attrs": {}}) == "intensity"  # sets made before the option
    assert cloud_construction({"attrs": {"clouds": "source"}}) == "source"
    # one bright pixel plus a faint rim: the source construction's resamplings sit on one pixel
    image = _image({(14, 14): 255, **{(14, c): 60 for c in range(2, 12)}})
    points = torch.from_numpy(images_to_point_clouds(image, 64, np.random.default_rng(0), construction="source"))
    source = chamfer_report(points, points, image, construction="source")
    intensity = chamfer_report(points, points, image, construction="intensity")
    assert intensity["noise_floor_l2"] > 2 * source["noise_floor_l2"]
    assert source["chamfer_l2"] == 0.0


def test_source_config_has_the_source_parameter_count():
    model = Digit4Flow(ModelConfig(**yaml.safe_load(SOURCE_YAML.read_text())["model"]))
    assert sum(p.numel() for p in model.parameters()) == 372_930  # FlowMix's MnistFlow2D defaults
    assert sum(p.numel() for p in Digit4Flow(ModelConfig()).parameters()) == 520_834  # genflow's default


@pytest.mark.parametrize("use_vae", [False, True])
def test_unit_latent_puts_codes_on_the_unit_sphere(use_vae):
    torch.manual_seed(0)
    model = Digit4Flow(ModelConfig(**TINY, unit_latent=True, use_vae=use_vae, encoder_layer_norm=True))
    out = model.encode(torch.randn(3, 20, 2))
    code = out["mu"] if use_vae else out["context"]
    assert torch.allclose(code.norm(dim=-1), torch.ones(3), atol=1e-5)
    plain = Digit4Flow(ModelConfig(**TINY, use_vae=use_vae)).encode(torch.randn(3, 20, 2))
    assert not torch.allclose((plain["mu"] if use_vae else plain["context"]).norm(dim=-1), torch.ones(3), atol=1e-2)


class _Draws:
    def __init__(self, noise, u):
        self.noise, self.u = noise, u

    def randn(self, *shape, dtype=torch.float32):
        return self.noise if shape == tuple(self.noise.shape) else torch.zeros(*shape)

    def rand(self, *shape, dtype=torch.float32):
        return self.u


@pytest.mark.parametrize("prediction", ["noise", "target"])
def test_velocity_loss_space_weights_noise_and_target_predictions_back_to_velocity(prediction):
    torch.manual_seed(0)
    x1, x0, u = torch.randn(4, 10, 2), torch.randn(4, 10, 2), torch.tensor([0.1, 0.3, 0.6, 0.9])
    losses = {}
    for space in ("prediction", "velocity"):
        cfg = Digit4Config(model=ModelConfig(**TINY, prediction_target=prediction, loss_space=space))
        recipe = Digit4Recipe(cfg)
        torch.manual_seed(1)
        model = Digit4Flow(cfg.model)
        for p in model.field.output_projection.parameters():
            torch.nn.init.normal_(p, std=0.3)  # a non-zero prediction
        losses[space], _ = recipe.compute_loss(model, {"points": x1}, _Draws(x0, u))
        eps = recipe.objective.t_eps
        t = eps + (1 - 2 * eps) * u
        x_t = (1 - t)[:, None, None] * x0 + t[:, None, None] * x1
        prediction_out = model(x_t, t, x1)["prediction"]
    target, weight = (x0, 1 / t**2) if prediction == "noise" else (x1, 1 / (1 - t) ** 2)
    per_sample = ((prediction_out - target) ** 2).mean(dim=(1, 2))
    assert losses["prediction"].item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    assert losses["velocity"].item() == pytest.approx((weight * per_sample).mean().item(), rel=1e-5)


def test_source_options_default_off():
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert defaults["field"] == "adaln_zero" and defaults["loss_space"] == "prediction"
    assert not defaults["unit_latent"] and not defaults["encoder_layer_norm"] and defaults["init"] == "torch"
