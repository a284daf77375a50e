import pytest
import torch
from diffusers import DDPMScheduler

from genflow.errors import ConfigError
from genflow.objectives import BETA_SCHEDULES, PREDICTION_TYPES, DiffusionObjective


def _batch(seed: int = 0, shape=(6, 1, 4, 4)):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    return x0, noise


# every fifth timestep plus both ends, one per sample
TIMESTEPS = torch.cat([torch.arange(0, 1000, 5), torch.tensor([999])])


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_add_noise_and_velocity_match_diffusers(schedule):
    objective = DiffusionObjective(beta_schedule=schedule, prediction_type="v_prediction")
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type="v_prediction")
    x0, noise = _batch(shape=(len(TIMESTEPS), 2, 3))
    torch.testing.assert_close(
        objective.add_noise(x0=x0, noise=noise, timesteps=TIMESTEPS), reference.add_noise(x0, noise, TIMESTEPS), rtol=0, atol=0
    )
    torch.testing.assert_close(
        objective.training_target(x0=x0, noise=noise, timesteps=TIMESTEPS), reference.get_velocity(x0, noise, TIMESTEPS), rtol=0, atol=0
    )


def test_training_target_is_noise_or_data_for_epsilon_and_sample():
    x0, noise = _batch()
    timesteps = torch.randint(0, 1000, (6,))
    assert torch.equal(DiffusionObjective(prediction_type="epsilon").training_target(x0=x0, noise=noise, timesteps=timesteps), noise)
    assert torch.equal(DiffusionObjective(prediction_type="sample").training_target(x0=x0, noise=noise, timesteps=timesteps), x0)


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_predicted_clean_inverts_the_forward_process(schedule, prediction):
    objective = DiffusionObjective(beta_schedule=schedule, prediction_type=prediction)
    timesteps = torch.arange(1000)
    if prediction == "epsilon":
        # x0_hat divides by sqrt(alpha_bar), 5e-5 at the last squaredcos step, which blows float32
        # rounding up to ~2e-3 there; that step (alpha_bar ~ 2e-9) is the only one left out
        timesteps = timesteps[objective.alphas_cumprod > 1e-6]
        assert len(timesteps) >= 999
    x0, noise = _batch(shape=(len(timesteps), 1, 4, 4))
    x_t = objective.add_noise(x0=x0, noise=noise, timesteps=timesteps)
    target = objective.training_target(x0=x0, noise=noise, timesteps=timesteps)
    torch.testing.assert_close(objective.predicted_clean(target, x_t, timesteps), x0, rtol=0, atol=1e-4)


def test_loss_is_float32_mse_to_the_target():
    objective = DiffusionObjective(prediction_type="epsilon")
    x0, noise = _batch()
    timesteps = torch.randint(0, 1000, (6,))
    output = (noise + 0.5).to(torch.bfloat16)
    loss = objective.loss(output, x0=x0, noise=noise, timesteps=timesteps)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.25, abs=1e-2)


def test_timesteps_from_uniforms_cover_the_range():
    objective = DiffusionObjective(num_train_timesteps=10)
    uniform = torch.tensor([0.0, 0.05, 0.1, 0.5, 0.9999, 1 - 2**-24])
    timesteps = objective.sample_timesteps(uniform)
    assert timesteps.dtype == torch.int64
    assert timesteps.tolist() == [0, 0, 1, 5, 9, 9]
    many = objective.sample_timesteps(torch.rand(2000, generator=torch.Generator().manual_seed(0)))
    assert many.min() == 0 and many.max() == 9


def test_network_time_is_timestep_over_T():
    objective = DiffusionObjective(num_train_timesteps=1000)
    t = objective.network_time(torch.tensor([0, 500, 999]))
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.0, 0.5, 0.999]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta_schedule": "cosine"}, r"model\.path\.beta_schedule='cosine'; valid: linear \| scaled_linear"),
        ({"prediction_type": "velocity"}, r"model\.path\.prediction_type='velocity'; valid: epsilon \| v_prediction"),
        ({"num_train_timesteps": 1}, r"model\.path\.num_train_timesteps=1"),
    ],
)
def test_unknown_options_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DiffusionObjective(**kwargs)
