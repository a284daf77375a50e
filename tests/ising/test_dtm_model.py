"""The DTM's forward process, fixed input couplings, gradient estimator and a tiny model that learns."""

import math

import pytest
import torch

from genflow.errors import ConfigError
from genflow.ising.dtm import (
    DenoisingThermodynamicModel,
    PhaseMoments,
    flip_probability,
    input_coupling,
    ising_gradients,
    perturb_levels,
    thermometer_decode,
    thermometer_encode,
    time_grid,
)
from genflow.ising.gibbs import SamplingSchedule


def uniform_from(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda shape: torch.rand(shape, generator=g)


def test_time_grids():
    assert time_grid(4, "linear") == [0, 0.25, 0.5, 0.75, 1.0]
    log = time_grid(4, "log")
    assert log[0] == 0 and math.isclose(log[2], math.log(2)) and math.isinf(log[4])
    with pytest.raises(ConfigError, match="time_grid"):
        time_grid(4, "cosine")


@pytest.mark.parametrize("rate,dt", [(0.9, 0.1), (0.9, 0.6), (0.2, 1.5)])
def test_noise_marginals_follow_the_forward_process(rate, dt):
    levels = torch.ones(200_000, 1, dtype=torch.long)  # every bit on
    flip = flip_probability(rate, dt)
    noised = perturb_levels(levels, 1, flip, uniform_from(0))
    # a bit is replaced by a fair coin with probability 1 - e^{-rate dt}: it reads off half of those times
    assert abs(float((noised == 0).float().mean()) - flip / 2) < 0.005
    # two steps compose into one over the summed time (a continuous-time Markov chain)
    twice = perturb_levels(perturb_levels(levels, 1, flip, uniform_from(1)), 1, flip, uniform_from(2))
    assert abs(float((twice == 0).float().mean()) - flip_probability(rate, 2 * dt) / 2) < 0.005


def test_fixed_coupling_reproduces_the_forward_kernel():
    rate, dt = 0.9, 0.3
    J = input_coupling(rate, dt)
    # P(x_t = x_s) = e^J / (e^J + e^-J) must equal 1 - flip / 2
    assert math.isclose(1 / (1 + math.exp(-2 * J)), 1 - flip_probability(rate, dt) / 2, rel_tol=1e-12)
    assert input_coupling(rate, math.inf) == 0.0  # pure noise carries no information: unconditional step


def test_thermometer_code_round_trips_and_counts_levels():
    levels = torch.tensor([[0, 1, 2, 3]])
    spins = thermometer_encode(levels, 3)
    assert spins.tolist() == [[-1, -1, -1, 1, -1, -1, 1, 1, -1, 1, 1, 1]]
    assert torch.equal(thermometer_decode(spins, 3), levels)
    noised = perturb_levels(torch.full((1000, 5), 3), 3, 1.0, uniform_from(3))
    assert noised.min() >= 0 and noised.max() <= 3 and abs(float(noised.float().mean()) - 1.5) < 0.1


def test_gradient_sign_on_a_two_spin_model():
    """Data with two aligned spins; a model at J = 0 sees them uncorrelated: descent must raise J
    and the biases towards the data's means; the correlation penalty pushes back on model correlation."""
    one = torch.ones(1, 1, 1)
    data = PhaseMoments(mean0=0.6 * one, mean1=0.6 * one, corr=torch.ones(1, 1, 1, 1))  # <s1 s2>+ = 1
    model = PhaseMoments(mean0=0 * one, mean1=0 * one, corr=torch.zeros(1, 1, 1, 1))
    grads = ising_gradients(data, model, model.mean0.view(1, 1, 1, 1) * model.mean1.view(1, 1, 1, 1), beta=1.0, penalty=0.0)
    assert grads["weight"].item() < 0 and grads["bias0"].item() < 0 and grads["bias1"].item() < 0
    # a model whose own connected correlation is high gets a positive (J-lowering) penalty push
    correlated = PhaseMoments(mean0=0 * one, mean1=0 * one, corr=torch.ones(1, 1, 1, 1))
    same = ising_gradients(correlated, correlated, torch.zeros(1, 1, 1, 1), beta=1.0, penalty=0.5)
    assert same["weight"].item() > 0 and same["bias0"].item() == 0
    # at the data's moments (no penalty) the estimate vanishes
    assert all(g.abs().max() == 0 for g in ising_gradients(data, data, torch.zeros(1, 1, 1, 1), 1.0, 0.0).values())


def tiny_model(**kw):
    options = dict(graph="20_8", num_pixels=4, num_classes=2, num_label_spots=2, num_steps=2, image_rate=0.9, seed=3)
    options.update(kw)
    return DenoisingThermodynamicModel(**options)


def test_input_couplings_are_buffers_and_only_graph_parameters_train():
    model = tiny_model()
    names = {n for n, _ in model.named_parameters()}
    assert names == {f"steps.{k}.{p}" for k in range(2) for p in ("bias0", "bias1", "weight")}
    step0, step1 = model.steps
    assert "input_coupling" in dict(step0.named_buffers())
    assert float(step1.input_coupling[0]) == 0.0  # log grid: the last step is unconditional
    assert float(step0.input_coupling[0]) == pytest.approx(input_coupling(0.9, math.log(2)))


@pytest.mark.parametrize("persistent", [None, SamplingSchedule(1, 4, 2)], ids=["fresh-chains", "persistent-chains"])
def test_training_on_a_fixed_pattern_lowers_the_mismatch_and_generates_the_pattern(persistent):
    """T = 1 (unconditional), 4 binary pixels always [on, off, on, on]: biases learn the pattern, also
    with persistent negative chains and a 1-sweep warm-up."""
    torch.manual_seed(0)
    model = tiny_model(num_steps=1, num_classes=1, num_label_spots=1)
    levels = torch.tensor([[1, 0, 1, 1]]).repeat(32, 1)
    labels = torch.zeros(32, dtype=torch.long)
    schedule = SamplingSchedule(5, 4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    uniform = uniform_from(4)
    mismatch = []
    for step in range(40):
        keys = torch.tensor([[[step, 1], [step, 2]]])
        loss, _ = model(levels, labels, schedule, keys, uniform, persistent=persistent)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mismatch.append(float(loss.detach()))
    assert sum(mismatch[-5:]) < 0.5 * sum(mismatch[:5])  # the moment mismatch (the loss value) goes down
    assert model.steps[0].chains0.shape[-1] == (0 if persistent is None else 32)  # the chains are kept
    key = iter(torch.arange(100).view(50, 2))
    out = model.generate(64, 30, lambda: next(key), uniform=uniform)
    assert out["levels"].shape == (64, 4)
    assert (out["levels"] == torch.tensor([1, 0, 1, 1])).float().mean() > 0.9


def test_generation_clamps_labels_and_returns_votes():
    model = tiny_model()
    key = iter(torch.arange(100).view(50, 2))
    out = model.generate(6, 5, lambda: next(key), labels=torch.tensor([0, 1, 0, 1, 0, 1]), uniform=uniform_from(5))
    assert torch.equal(out["label_votes"], torch.eye(2)[[0, 1, 0, 1, 0, 1]])


def test_only_unconditional_steps_keep_persistent_chains_and_they_survive_a_checkpoint():
    model = tiny_model()  # 2 log-grid steps: step 0 conditional, step 1 unconditional (input couplings 0)
    assert not model.steps[0].unconditional and model.steps[1].unconditional
    levels, labels = torch.tensor([[1, 0, 1, 1]]).repeat(8, 1), torch.zeros(8, dtype=torch.long)
    keys = torch.arange(8).view(2, 2, 2)
    model(levels, labels, SamplingSchedule(3, 2, 1), keys, uniform_from(6), persistent=SamplingSchedule(1, 2, 1))
    assert model.steps[0].chains0.shape[-1] == 0 and model.steps[1].chains0.shape[-1] == 8
    restored = tiny_model()
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.steps[1].chains1, model.steps[1].chains1)
    restored.load_state_dict({k: v for k, v in model.state_dict().items() if "chains" not in k})  # an older checkpoint
    assert restored.steps[1].chains0.shape[-1] == 0


def test_autocorrelation_follows_the_reference_formula_for_every_chain_set():
    from genflow.ising.dtm import autocorrelation_1d

    x = torch.randn(3, 5, 4, 20).cumsum(-1)  # (images, directions, chains, time): slowly mixing series
    curves = autocorrelation_1d(x)
    assert curves.shape == (3, 5, 11)
    one = x[1, 2] / x[1, 2].std()
    n = 10
    direct = [float((one[:, :n] * one[:, lag:lag + n]).mean() - one[:, :n].mean() * one[:, -(n // 2):].mean()) for lag in range(n + 1)]
    assert curves[1, 2].tolist() == pytest.approx(direct, rel=1e-5, abs=1e-6)
    assert float(curves[..., 1].mean()) > float(autocorrelation_1d(torch.randn(3, 5, 4, 20))[..., 1].mean())
