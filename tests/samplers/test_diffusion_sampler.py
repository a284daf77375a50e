import pytest
import torch

from genflow.errors import ConfigError
from genflow.objectives import BETA_SCHEDULES, PREDICTION_TYPES, DiffusionObjective
from genflow.samplers import DIFFUSION_SAMPLERS, diffusion_nfe, sample_diffusion
from genflow.samplers.diffusion import TIMESTEP_SPACINGS

SHAPE = (3, 1, 4, 4)


def shrink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in network: any output works for shape and reproducibility checks."""
    assert t.shape == (x.shape[0],) and ((0 <= t) & (t < 1)).all()
    return 0.5 * x * (1 - t).reshape(-1, 1, 1, 1)


def point_mass_oracle(objective: DiffusionObjective, c: torch.Tensor):
    """The exact denoiser when the data is always ``c``: the output the objective trains towards for x0 = c."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timesteps = (t * objective.num_train_timesteps).round().long()
        x0 = c.expand_as(x_t)
        alpha_bar = objective.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        noise = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return objective.training_target(x0=x0, noise=noise, timesteps=timesteps)

    return denoise


def gaussian_oracle(objective: DiffusionObjective, mean: float, std: float):
    """The exact denoiser when the data is N(mean, std^2): E[x0 | x_t] is linear in x_t."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timesteps = (t * objective.num_train_timesteps).round().long()
        alpha_bar = objective.alphas_cumprod[timesteps].reshape(-1, *([1] * (x_t.ndim - 1)))
        signal = alpha_bar.sqrt()
        x0 = mean + signal * std**2 / (alpha_bar * std**2 + 1 - alpha_bar) * (x_t - signal * mean)
        noise = (x_t - signal * x0) / (1 - alpha_bar).sqrt()
        return objective.training_target(x0=x0, noise=noise, timesteps=timesteps)

    return denoise


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_samples_have_the_requested_shape(sampler, prediction):
    objective = DiffusionObjective(prediction_type=prediction)
    x = sample_diffusion(shrink, SHAPE, objective, sampler=sampler, steps=4, generator=_generator())
    assert x.shape == SHAPE and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_ddim_without_noise_is_deterministic_given_the_generator():
    objective = DiffusionObjective()
    first, again, other = (
        sample_diffusion(shrink, SHAPE, objective, steps=5, eta=0.0, generator=_generator(seed))
        for seed in (0, 0, 1)
    )
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("sampler, eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_stochastic_steps_draw_from_the_generator(sampler, eta):
    objective = DiffusionObjective()

    def run(seed: int) -> torch.Tensor:
        return sample_diffusion(shrink, SHAPE, objective, sampler=sampler, steps=5, eta=eta, generator=_generator(seed))

    torch.manual_seed(123)  # the global RNG must not matter
    first = run(0)
    torch.manual_seed(456)
    assert torch.equal(first, run(0))


@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_network_evaluations_equal_nfe(sampler):
    calls = []

    def counting(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t[0].item())
        return shrink(x, t)

    sample_diffusion(counting, SHAPE, DiffusionObjective(), sampler=sampler, steps=7, generator=_generator())
    assert len(calls) == diffusion_nfe(sampler, 7) == 7
    assert calls == sorted(calls, reverse=True)  # from noise towards data


@pytest.mark.parametrize("spacing, first_t", [("leading", 0.9), ("trailing", 0.999)])
def test_timestep_spacing_sets_the_first_time(spacing, first_t):
    calls = []

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t[0].item())
        return shrink(x, t)

    sample_diffusion(recording, SHAPE, DiffusionObjective(), steps=10, timestep_spacing=spacing, generator=_generator())
    assert calls[0] == pytest.approx(first_t)


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler, steps", [("ddim", 20), ("ddpm", 50)])
def test_exact_denoiser_of_a_point_mass_recovers_it(sampler, steps, prediction, schedule, spacing):
    objective = DiffusionObjective(beta_schedule=schedule, prediction_type=prediction)
    c = torch.linspace(-1.5, 1.5, 16).reshape(1, 1, 4, 4)
    x = sample_diffusion(
        point_mass_oracle(objective, c), SHAPE, objective, sampler=sampler, steps=steps,
        timestep_spacing=spacing, generator=_generator(),
    )
    torch.testing.assert_close(x, c.expand(SHAPE), rtol=0, atol=1e-5)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler", DIFFUSION_SAMPLERS)
def test_exact_denoiser_of_a_gaussian_reproduces_its_mean_and_std(sampler, prediction):
    """Unlike a point mass, this checks the noise levels of every step, not only the last x0 estimate.

    Few steps shrink the spread of narrow data (std 0.24 at 20 DDIM steps here), so use 200.
    """
    objective = DiffusionObjective(prediction_type=prediction)
    x = sample_diffusion(
        gaussian_oracle(objective, mean=0.5, std=0.3), (4000, 1), objective, sampler=sampler, steps=200,
        generator=_generator(),
    )
    assert x.mean().item() == pytest.approx(0.5, abs=0.02)
    assert x.std().item() == pytest.approx(0.3, abs=0.015)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": "euler"}, r"model\.sampler\.sampler_type='euler'; valid: ddim \| ddpm"),
        ({"steps": 0}, r"model\.sampler\.steps=0 must be an integer in \[1, 1000\]"),
        ({"steps": 1001}, r"model\.sampler\.steps=1001"),
        ({"eta": -0.5}, r"model\.sampler\.eta=-0\.5"),
        ({"timestep_spacing": "linspace"}, r"model\.sampler\.timestep_spacing='linspace'; valid: leading \| trailing"),
    ],
)
def test_bad_sampler_options_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sample_diffusion(shrink, SHAPE, DiffusionObjective(), **kwargs)


def test_nfe_of_an_unknown_sampler_raises_config_error():
    with pytest.raises(ConfigError, match="model.sampler.sampler_type"):
        diffusion_nfe("heun", 10)
