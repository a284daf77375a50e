"""The stencil block Gibbs sampler against a dense reference and exact enumeration."""

import itertools

import pytest
import torch

from genflow.ising.graph import TorusGraph
from genflow.ising.gibbs import BlockGibbsSampler, SamplingSchedule, SpinState, philox4x32, philox_uniform


def random_model(graph: TorusGraph, scale: float = 0.3, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    H, D = graph.half, graph.degree
    w0 = torch.randn(2, D, H, H, generator=g, dtype=dtype) * scale
    b0 = torch.randn(2, H, H, generator=g, dtype=dtype) * scale
    b1 = torch.randn(2, H, H, generator=g, dtype=dtype) * scale
    return w0, graph.colour_one_weights(w0), b0, b1


def random_spins(graph: TorusGraph, batch: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (2, graph.half, graph.half, batch), generator=g).to(dtype) * 2 - 1


def grid_of(graph: TorusGraph, colour0: torch.Tensor, colour1: torch.Tensor) -> torch.Tensor:
    """(2, H, H, B) halves -> (B, N) grid order."""
    return graph.to_grid(colour0.permute(3, 0, 1, 2), colour1.permute(3, 0, 1, 2))


@pytest.mark.parametrize("preset", ["20_8", "44_12", "50_16"])
def test_stencil_conditionals_equal_the_dense_reference(preset):
    graph = TorusGraph.from_preset(preset)
    sampler = BlockGibbsSampler(graph)
    w0, w1, b0, b1 = random_model(graph)
    s0, s1 = random_spins(graph, 3, 1), random_spins(graph, 3, 2)
    J = graph.dense_couplings(w0)
    dense_bias = graph.to_grid(b0, b1)
    beta = 0.7
    dense = torch.sigmoid(2 * beta * (dense_bias + grid_of(graph, s0, s1) @ J))  # P(s_i = +1 | all others)
    p0 = sampler.conditional_probability(0, s1, w0, b0, beta)
    p1 = sampler.conditional_probability(1, s0, w1, b1, beta)
    stencil = grid_of(graph, p0, p1)
    # colour-0 sites depend only on colour 1 (and vice versa), so the mixed grid is exact for both
    torch.testing.assert_close(stencil, dense, rtol=0, atol=1e-12)


def test_per_chain_biases_enter_the_field():
    graph = TorusGraph(20, 8)
    sampler = BlockGibbsSampler(graph)
    w0, _, b0, _ = random_model(graph)
    s1 = random_spins(graph, 2, 3)
    extra = torch.randn(2, 10, 10, 2, dtype=torch.float64)
    h = sampler.field(0, s1, w0, b0.unsqueeze(-1) + extra)
    torch.testing.assert_close(h - sampler.field(0, s1, w0, b0), extra)


def exact_moments(graph: TorusGraph, w0, b0, b1, beta: float, clamp: dict[int, float] | None = None):
    """Exact <s_i> and <s_i s_j> (edges) of the Boltzmann distribution by enumerating all states."""
    n = graph.num_nodes
    J = graph.dense_couplings(w0).double()
    b = graph.to_grid(b0, b1).double()
    states = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)), dtype=torch.float64)
    if clamp:
        keep = torch.ones(len(states), dtype=torch.bool)
        for i, v in clamp.items():
            keep &= states[:, i] == v
        states = states[keep]
    energy = -(0.5 * ((states @ J) * states).sum(1) + states @ b)
    p = torch.softmax(-beta * energy, 0)
    edges = torch.as_tensor(graph.edges)
    return p @ states, p @ (states[:, edges[:, 0]] * states[:, edges[:, 1]])


def sampled_moments(graph, sampler, w0, w1, b0, b1, beta, chains=256, sweeps=400, free0=None, clamp_state=None):
    key = torch.tensor([7, 11])
    state = sampler.chains(chains, (b0.float(), b1.float()), beta, key)
    if clamp_state is not None:
        state.colour0 = torch.where(free0.unsqueeze(-1), state.colour0, clamp_state)
    schedule = SamplingSchedule(warmup=50, n_samples=sweeps, steps_per_sample=1)
    moments = sampler.run(state, (w0.float(), w1.float()), (b0.float(), b1.float()), schedule, key, beta=beta, free=(free0, None))
    m0, m1, corr = moments.averages()
    return graph.to_grid(m0, m1).double(), corr.reshape(-1).double()


def test_gibbs_marginals_match_exact_enumeration_on_a_tiny_torus():
    graph = TorusGraph(4, 4)  # 16 spins: 65536 states
    sampler = BlockGibbsSampler(graph)
    w0, w1, b0, b1 = random_model(graph, scale=0.4, seed=5)
    exact_mean, exact_corr = exact_moments(graph, w0, b0, b1, beta=1.0)
    mean, corr = sampled_moments(graph, sampler, w0, w1, b0, b1, beta=1.0)
    assert (mean - exact_mean).abs().max() < 0.04
    assert (corr - exact_corr).abs().max() < 0.04
    assert exact_mean.abs().max() > 0.2  # the model is far from uniform: the check is not vacuous


def test_compiled_sampler_matches_exact_enumeration_too():
    """The fast path (torch.compile: fused stencil, draw and clamp; int32 Philox words) samples the same
    distribution, from the same random numbers as the eager sampler."""
    graph = TorusGraph(4, 4)
    sampler = BlockGibbsSampler(graph, compile=True)
    w0, w1, b0, b1 = random_model(graph, scale=0.4, seed=7)
    exact_mean, exact_corr = exact_moments(graph, w0, b0, b1, beta=1.0)
    mean, corr = sampled_moments(graph, sampler, w0, w1, b0, b1, beta=1.0)
    assert sampler.compiled  # it really compiled (no eager fallback)
    assert (mean - exact_mean).abs().max() < 0.04 and (corr - exact_corr).abs().max() < 0.04
    eager_mean, eager_corr = sampled_moments(graph, BlockGibbsSampler(graph), w0, w1, b0, b1, beta=1.0)
    # same draws: equal up to the rare spin whose field rounds differently (one flip moves a mean by 1e-5)
    assert (mean - eager_mean).abs().max() < 1e-3 and (corr - eager_corr).abs().max() < 1e-3


def test_clamped_sites_keep_their_values_and_the_rest_sample_the_conditional():
    graph = TorusGraph(4, 4)
    sampler = BlockGibbsSampler(graph)
    w0, w1, b0, b1 = random_model(graph, scale=0.4, seed=6)
    free0 = torch.ones(2, 2, 2, dtype=torch.bool)
    free0[0, 0, 0] = free0[1, 1, 0] = False  # clamp two colour-0 sites
    clamp_state = torch.zeros(2, 2, 2, 1)
    clamp_state[0, 0, 0], clamp_state[1, 1, 0] = 1.0, -1.0
    index0 = graph.grid_index[0]
    clamp = {int(index0[0, 0, 0]): 1.0, int(index0[1, 1, 0]): -1.0}
    exact_mean, _ = exact_moments(graph, w0, b0, b1, beta=0.8, clamp=clamp)
    mean, _ = sampled_moments(graph, sampler, w0, w1, b0, b1, beta=0.8, free0=free0, clamp_state=clamp_state)
    for i, v in clamp.items():
        assert mean[i] == v
    assert (mean - exact_mean).abs().max() < 0.04


def test_philox_matches_the_random123_known_answers():
    zero = torch.tensor([0])
    assert [int(w) for w in philox4x32(zero, zero, torch.tensor(0), torch.tensor(0))] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = torch.tensor([0xFFFFFFFF])  # extreme words: int64 products wrap, the results stay 32-bit words
    words = philox4x32(ones, ones, torch.tensor(0xFFFFFFFF), torch.tensor(0xFFFFFFFF))
    assert all(0 <= int(w) <= 0xFFFFFFFF for w in words)


def test_philox_on_int32_words_gives_the_same_words():
    counters = torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678])
    as32 = lambda x: (torch.as_tensor(x) & 0xFFFFFFFF).to(torch.int32)  # noqa: E731
    for key in ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0xDEADBEEF, 7)):
        wide = philox4x32(counters, torch.tensor(0xFFFFFFFE), torch.tensor(key[0]), torch.tensor(key[1]))
        narrow = philox4x32(as32(counters), as32(0xFFFFFFFE), as32(key[0]), as32(key[1]), words32=True)
        assert all(torch.equal(w, n.to(torch.int64) & 0xFFFFFFFF) for w, n in zip(wide, narrow))


def test_uniforms_are_16_bit_midpoints_of_any_count_and_the_same_compiled():
    key, call = torch.tensor([3, 0xDEADBEEF]), torch.tensor(5)
    u = philox_uniform((3, 7, 5), key, call)  # 105 numbers: not a multiple of the 8 a Philox block makes
    assert u.shape == (3, 7, 5) and float(u.min()) > 0 and float(u.max()) < 1
    levels = u.flatten() * 65536 - 0.5
    assert torch.equal(levels, levels.round())  # (k + 1/2) / 2^16
    many = philox_uniform((200_000,), key, call)
    assert abs(float(many.mean()) - 0.5) < 0.003 and abs(float((many < 0.1).float().mean()) - 0.1) < 0.003
    assert len(torch.unique(many)) > 60_000  # all 2^16 levels in use, not a coarser grid
    compiled = torch.compile(philox_uniform, dynamic=False)
    assert torch.equal(compiled((3, 7, 5), key, call), u)


def test_annealed_run_needs_one_beta_per_sweep():
    graph = TorusGraph(4, 4)
    sampler = BlockGibbsSampler(graph)
    w0, w1, b0, b1 = (t.float() for t in random_model(graph))
    state = sampler.chains(4, (b0, b1), 1.0, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="3 beta values for a schedule of 5 sweeps"):
        sampler.run(state, (w0, w1), (b0, b1), SamplingSchedule(5, 1, 1), torch.tensor([1, 2]), beta=[0.8, 1.0, 1.2])
    assert isinstance(state, SpinState) and state.batch == 4


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    def broken_compile(fn, **_):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    graph = TorusGraph(4, 4)
    sampler = BlockGibbsSampler(graph, compile=True)
    w0, w1, b0, b1 = (t.float() for t in random_model(graph))
    state = sampler.chains(4, (b0, b1), 1.0, torch.tensor([1, 2]))
    with pytest.warns(RuntimeWarning, match="no C.. compiler found.*continuing eager"):
        moments = sampler.run(state, (w0, w1), (b0, b1), SamplingSchedule(3, 2, 1), torch.tensor([1, 2]))
    assert not sampler.compiled and moments.count == 2
    assert set(state.colour0.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("compile", [False, True])
def test_a_mostly_clamped_colour_samples_the_conditional(compile):
    """A positive phase clamps most colour-0 sites (the data on the visible nodes): the few free ones still
    sample their conditional."""
    graph = TorusGraph(4, 4)
    sampler = BlockGibbsSampler(graph, compile=compile)
    w0, w1, b0, b1 = random_model(graph, scale=0.5, seed=8)
    free0 = torch.zeros(2, 2, 2, dtype=torch.bool)
    free0[1, 0, 1] = True  # one free colour-0 site of 8
    clamp_state = torch.where(torch.rand(2, 2, 2, 1, generator=torch.Generator().manual_seed(3)) < 0.5, 1.0, -1.0)
    index0 = graph.grid_index[0]
    clamp = {int(index0[q, i, j]): float(clamp_state[q, i, j, 0]) for q in range(2) for i in range(2) for j in range(2)
             if not free0[q, i, j]}
    exact_mean, _ = exact_moments(graph, w0, b0, b1, beta=0.8, clamp=clamp)
    mean, _ = sampled_moments(graph, sampler, w0, w1, b0, b1, beta=0.8, free0=free0, clamp_state=clamp_state)
    for i, v in clamp.items():
        assert mean[i] == v
    assert (mean - exact_mean).abs().max() < 0.04
    assert (exact_mean - exact_mean.mean()).abs().max() > 0.2  # not a uniform model: the check can fail

