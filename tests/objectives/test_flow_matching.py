import pytest
import torch

from genflow.errors import ConfigError
from genflow.objectives.flow_matching import (
    SCHEDULERS,
    AffinePath,
    FlowMatchingObjective,
    make_scheduler,
)

# (genflow name, kwargs, flow_matching class name, kwargs for it)
SCHEDULER_CASES = [
    ("condot", {}, "CondOTScheduler", {}),
    ("cosine", {}, "CosineScheduler", {}),
    ("vp", {"beta_min": 0.1, "beta_max": 20.0}, "VPScheduler", {"beta_min": 0.1, "beta_max": 20.0}),
    ("linear_vp", {}, "LinearVPScheduler", {}),
    ("polynomial", {"n": 3.0}, "PolynomialConvexScheduler", {"n": 3.0}),
]


def _batch(seed: int = 0, shape=(8, 5, 2)):
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(shape, generator=generator, dtype=torch.float64)
    x0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    # away from the ends, where some conversions divide by zero
    t = 0.05 + 0.9 * torch.rand(shape[0], generator=generator, dtype=torch.float64)
    return x1, x0, t


def test_every_scheduler_name_is_tested():
    assert {case[0] for case in SCHEDULER_CASES} == set(SCHEDULERS)


@pytest.mark.parametrize("name, kwargs, fm_name, fm_kwargs", SCHEDULER_CASES)
def test_path_and_conversions_match_meta_flow_matching(name, kwargs, fm_name, fm_kwargs):
    # flow_matching is a dev dependency (CC-BY-NC, tests only): a missing install must fail, not skip
    import flow_matching.path as fm_path
    import flow_matching.path.scheduler as fm_scheduler

    reference = fm_path.AffineProbPath(getattr(fm_scheduler, fm_name)(**fm_kwargs))
    path = AffinePath(make_scheduler(name, **kwargs))
    x1, x0, t = _batch()

    ours = path.sample(x0=x0, x1=x1, t=t)
    theirs = reference.sample(x_0=x0, x_1=x1, t=t)
    torch.testing.assert_close(ours.x_t, theirs.x_t, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.dx_t, theirs.dx_t, atol=1e-5, rtol=0)

    # flow_matching's conversions need t already broadcastable to x_t; ours take t of shape (B,)
    t_b = t[:, None, None]
    v, x_t = ours.dx_t, ours.x_t
    pairs = [
        (path.target_to_velocity(x1_hat=x1, x_t=x_t, t=t), reference.target_to_velocity(x_1=x1, x_t=x_t, t=t_b)),
        (path.epsilon_to_velocity(eps_hat=x0, x_t=x_t, t=t), reference.epsilon_to_velocity(epsilon=x0, x_t=x_t, t=t_b)),
        (path.velocity_to_target(velocity=v, x_t=x_t, t=t), reference.velocity_to_target(velocity=v, x_t=x_t, t=t_b)),
        (path.velocity_to_epsilon(velocity=v, x_t=x_t, t=t), reference.velocity_to_epsilon(velocity=v, x_t=x_t, t=t_b)),
    ]
    for mine, meta in pairs:
        torch.testing.assert_close(mine, meta, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kwargs", [(case[0], case[1]) for case in SCHEDULER_CASES])
def test_conversions_round_trip_to_the_true_velocity(name, kwargs):
    path = AffinePath(make_scheduler(name, **kwargs))
    x1, x0, t = _batch(seed=1)
    sample = path.sample(x0=x0, x1=x1, t=t)
    torch.testing.assert_close(path.target_to_velocity(x1_hat=x1, x_t=sample.x_t, t=t), sample.dx_t)
    torch.testing.assert_close(path.epsilon_to_velocity(eps_hat=x0, x_t=sample.x_t, t=t), sample.dx_t)
    torch.testing.assert_close(path.velocity_to_target(velocity=sample.dx_t, x_t=sample.x_t, t=t), x1)
    torch.testing.assert_close(path.velocity_to_epsilon(velocity=sample.dx_t, x_t=sample.x_t, t=t), x0)


@pytest.mark.parametrize("name, kwargs", [(case[0], case[1]) for case in SCHEDULER_CASES])
def test_time_convention_t0_is_noise_and_t1_is_data(name, kwargs):
    scheduler = make_scheduler(name, **kwargs)
    ends = scheduler(torch.tensor([0.0, 1.0], dtype=torch.float64))
    # VP never reaches exactly alpha=0 at t=0 (exp(-T/2) with T ~ 10): close enough to pure noise
    torch.testing.assert_close(ends.alpha, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-2, rtol=0)
    torch.testing.assert_close(ends.sigma, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-2, rtol=0)


@pytest.mark.parametrize("prediction", ["velocity", "noise", "target"])
@pytest.mark.parametrize("name, kwargs", [(case[0], case[1]) for case in SCHEDULER_CASES])
def test_to_velocity_of_the_training_target_recovers_dx_t(prediction, name, kwargs):
    objective = FlowMatchingObjective(AffinePath(make_scheduler(name, **kwargs)), prediction=prediction)
    x1, x0, t = _batch(seed=2)
    sample = objective.path.sample(x0=x0, x1=x1, t=t)
    perfect_output = objective.training_target(sample, x0=x0, x1=x1)
    torch.testing.assert_close(objective.to_velocity(perfect_output, x_t=sample.x_t, t=t), sample.dx_t)
    assert objective.loss(perfect_output, sample, x0=x0, x1=x1).item() == 0.0


def test_to_velocity_stays_finite_at_the_singular_ends():
    x1, x0, _ = _batch(seed=3)
    ends = torch.tensor([0.0, 1.0]).repeat(4).double()
    for prediction in ("noise", "target"):
        objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")), prediction=prediction)
        assert torch.isfinite(objective.to_velocity(x1, x_t=x0, t=ends)).all()


def test_sample_time_is_reproducible_and_inside_the_clamped_interval():
    objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")), t_eps=0.01)
    first = objective.sample_time(1000, generator=torch.Generator().manual_seed(0))
    second = objective.sample_time(1000, generator=torch.Generator().manual_seed(0))
    assert first.shape == (1000,)
    torch.testing.assert_close(first, second)
    assert first.min() >= 0.01 and first.max() <= 0.99
    assert 0.45 < first.mean() < 0.55


def test_unknown_names_raise_config_errors_listing_valid_choices():
    with pytest.raises(ConfigError, match="condot"):
        make_scheduler("linear")
    with pytest.raises(ConfigError, match="velocity"):
        FlowMatchingObjective(AffinePath(make_scheduler("condot")), prediction="score")
    with pytest.raises(ConfigError, match="polynomial"):
        make_scheduler("polynomial", gamma=2)
