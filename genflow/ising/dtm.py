"""Denoising Thermodynamic Model (Extropic, 2025): a chain of conditional Ising models.

The forward process replaces each bit by a fair coin with probability 1 - exp(-λ t) (λ: image or
label rate). Denoising step k (k = 1..T) is its own Ising model on a torus graph
(:mod:`genflow.ising.graph`) that models p(x_{t_{k-1}} | x_{t_k}):

* visible output nodes — the image in thermometer code (L = `grayscale_levels` spins per pixel,
  pixel value = number of +1 spins) and the one-hot label tiled `num_label_spots` times — sit on a
  random (seeded per step) choice of colour-0 sites; all other sites are latent;
* each output node is coupled to its clamped input twin x_{t_k} by the FIXED coupling
  J = -½ ln tanh(λ Δt / 2) (exact for the forward process over Δt = t_k - t_{k-1}; 0 when x_{t_k}
  is pure noise, i.e. the last step of the log grid is unconditional). Inputs are clamped, so they
  act as a per-chain field J x_t on their twins; J is a buffer, never trained nor decayed;
* biases of every site and the couplings of the base graph are trained.

Training (per batch, per step): positive phase = outputs clamped to x_{t_{k-1}} (+ labels), inputs
x_{t_k}; negative phase = inputs only. With moments ⟨·⟩ averaged over samples and chains,

    grad b_i  = -β (⟨s_i⟩₊ - ⟨s_i⟩₋)
    grad J_ij = -β [(⟨s_i s_j⟩₊ - ⟨s_i s_j⟩₋) + λ_cp (⟨s_i⟩₋⟨s_j⟩₋ - ⟨s_i s_j⟩₋)]

(λ_cp: correlation penalty, adapted per epoch from the chains' autocorrelation). `forward` returns a
scalar whose autograd gradient is exactly this estimate, so any torch optimiser (and DDP gradient
averaging) applies it; its value is the mean squared moment mismatch between the phases, which is
zero at the maximum-likelihood fixed point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from genflow.errors import ConfigError
from genflow.threads import ThreadBudget
from genflow.ising.graph import TorusGraph
from genflow.ising.gibbs import BlockGibbsSampler, SamplingSchedule, SpinState

__all__ = ["DenoisingThermodynamicModel", "IsingDenoisingStep", "PhaseMoments", "ising_gradients", "time_grid", "input_coupling", "perturb_levels",
           "thermometer_encode", "thermometer_decode", "flip_probability", "autocorrelation_1d"]


# --- the forward process ----------------------------------------------------------------------------
def time_grid(num_steps: int, kind: str) -> list[float]:
    """t_0 = 0 < t_1 < ... < t_T: ``linear`` t_k = k / T, ``log`` t_k = -ln(1 - k / T) (t_T = inf)."""
    if kind not in ("log", "linear"):
        raise ConfigError(f"config key 'model.time_grid': expected 'log' or 'linear', got '{kind}'")
    x = [k / num_steps for k in range(num_steps + 1)]
    return x if kind == "linear" else [-math.log(1 - v) if v < 1 else math.inf for v in x]


def flip_probability(rate: float, dt: float) -> float:
    """Probability that a bit is replaced by a fair coin over time dt: 1 - exp(-rate dt)."""
    return 1.0 - math.exp(-rate * dt) if math.isfinite(dt) else 1.0


def input_coupling(rate: float, dt: float) -> float:
    """J = -½ ln tanh(rate dt / 2): P(x_t = x_s) = ½ (1 + e^{-rate dt}) as an Ising coupling."""
    if not math.isfinite(dt):
        return 0.0
    return -0.5 * math.log(math.tanh(rate * dt / 2))


def perturb_levels(levels: torch.Tensor, trials: int, flip: float, uniform) -> torch.Tensor:
    """Noise integer levels 0..trials: each of the `trials` thermometer bits (bit k = level > k) is
    replaced by a fair coin with probability `flip`; returns the new levels (sum of the bits).
    `uniform(shape)` draws U[0, 1)."""
    bits = levels.unsqueeze(-1) > torch.arange(trials, device=levels.device)
    replace = uniform((*bits.shape,)) < flip
    coin = uniform((*bits.shape,)) < 0.5
    return torch.where(replace, coin, bits).sum(-1).to(levels.dtype)


def thermometer_encode(levels: torch.Tensor, trials: int) -> torch.Tensor:
    """(..., P) levels 0..trials -> (..., P * trials) spins ±1 (bit k of pixel p at p * trials + k)."""
    bits = levels.unsqueeze(-1) > torch.arange(trials, device=levels.device)
    return (bits.float() * 2 - 1).flatten(-2)


def thermometer_decode(spins: torch.Tensor, trials: int) -> torch.Tensor:
    """(..., P * trials) spins -> (..., P) levels = number of +1 spins per pixel."""
    return (spins.unflatten(-1, (-1, trials)) > 0).sum(-1)


def autocorrelation_1d(x: torch.Tensor) -> torch.Tensor:
    """Autocorrelation (lag 0..T//2) of chains x (..., C, T) as the reference DTM computes it, for each
    set of C chains: x scaled by its std, c(lag) = mean(x[:, :n] x[:, lag:lag+n]) - mean(x[:, :n])
    mean(x[:, -(n//2):]) with n = T // 2. Returns (..., n + 1)."""
    n = x.shape[-1] // 2
    x = x / x.flatten(-2).std(-1).clamp_min(1e-12)[..., None, None]
    head = x[..., :n]
    tail_mean = (x[..., -(n // 2):] if n >= 2 else x).mean((-2, -1))
    windows = x.unfold(-1, n, 1)[..., : n + 1, :]  # (..., C, n + 1, n): x[:, lag:lag + n] for every lag
    products = (head.unsqueeze(-2) * windows).mean(-1).mean(-2)  # (..., n + 1)
    return products - (head.mean((-2, -1)) * tail_mean)[..., None]


# --- one denoising step -------------------------------------------------------------------------------
class IsingDenoisingStep(nn.Module):
    """The Ising model of one denoising step: trained biases and couplings, fixed input couplings."""

    def __init__(self, graph: TorusGraph, num_image_nodes: int, num_label_nodes: int, visible: torch.Tensor,
                 image_coupling: float, label_coupling: float):
        super().__init__()
        H, D = graph.half, graph.degree
        self.graph = graph
        self.num_image_nodes, self.num_label_nodes = num_image_nodes, num_label_nodes
        self.bias0 = nn.Parameter(torch.zeros(2, H, H))
        self.bias1 = nn.Parameter(torch.zeros(2, H, H))
        self.weight = nn.Parameter(torch.zeros(2, D, H, H))  # couplings, stored at colour-0 sites
        self.register_buffer("visible_sites", visible)  # flat colour-0 positions, image nodes first
        coupling = torch.full((num_image_nodes + num_label_nodes,), float(image_coupling))
        coupling[num_image_nodes:] = float(label_coupling)
        self.register_buffer("input_coupling", coupling)  # fixed: a buffer, so no gradient, no decay
        latent = torch.ones(2 * H * H, dtype=torch.bool)
        latent[visible] = False
        self.register_buffer("latent0", latent.view(2, H, H))
        # persistent negative-phase chains (PCD; see DenoisingThermodynamicModel.phase): (2, H, H, chains),
        # none until the first batch; kept in the state dict so a resumed run continues the same chains
        self.register_buffer("chains0", torch.zeros(2, H, H, 0))
        self.register_buffer("chains1", torch.zeros(2, H, H, 0))

    @property
    def unconditional(self) -> bool:
        """True when the step's inputs carry no information (input couplings 0: the log grid's last step)."""
        return bool((self.input_coupling == 0).all())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("chains0", "chains1"):  # the number of persistent chains is the batch's: take the saved one
            saved = state_dict.setdefault(prefix + name, getattr(self, name)[..., :0])  # none in older checkpoints
            setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_visible(self) -> int:
        return self.num_image_nodes + self.num_label_nodes

    def colour0_bias(self, inputs: torch.Tensor | None) -> torch.Tensor:
        """Colour-0 bias, plus the field J x_t of the clamped inputs (B, visible) on their twins:
        (2, H, H) without inputs, (2, H, H, B) with."""
        if inputs is None:
            return self.bias0
        H = self.graph.half
        field = torch.zeros(2 * H * H, inputs.shape[0], device=inputs.device)
        field[self.visible_sites] = (inputs * self.input_coupling).T
        return self.bias0.unsqueeze(-1) + field.view(2, H, H, -1)

    def clamp_visible(self, state: SpinState, values: torch.Tensor, nodes: slice = slice(None)) -> None:
        """Write visible node values (B, n) (all visible nodes, or `nodes`) into colour 0."""
        H = self.graph.half
        flat = state.colour0.reshape(2 * H * H, -1).clone()
        flat[self.visible_sites[nodes]] = values.T.to(flat.dtype)
        state.colour0 = flat.view(2, H, H, -1)

    def read_visible(self, state: SpinState) -> torch.Tensor:
        """Visible node values (B, visible) of colour 0."""
        H = self.graph.half
        return state.colour0.reshape(2 * H * H, -1)[self.visible_sites].T


@dataclass
class PhaseMoments:
    """Sample-and-chain averages of one phase: spins of each colour (2, H, H), edge products (2, D, H, H)."""

    mean0: torch.Tensor
    mean1: torch.Tensor
    corr: torch.Tensor


def ising_gradients(pos: PhaseMoments, neg: PhaseMoments, neg_outer: torch.Tensor, beta: float,
                    penalty: float) -> dict[str, torch.Tensor]:
    """The DTM's gradient estimate of the negative log-likelihood (to be descended):

    grad b = -β (⟨s⟩₊ - ⟨s⟩₋);  grad J = -β [(⟨s_i s_j⟩₊ - ⟨s_i s_j⟩₋) + λ_cp (m̄_i m̄_j - ⟨s_i s_j⟩₋)],
    with m̄ the negative phase's mean spins (`neg_outer` = m̄_i m̄_j per edge). The penalty term pushes
    the couplings against the model's own connected correlations, which slow its chains down.
    """
    return {"bias0": -beta * (pos.mean0 - neg.mean0), "bias1": -beta * (pos.mean1 - neg.mean1),
            "weight": -beta * ((pos.corr - neg.corr) + penalty * (neg_outer - neg.corr))}


# --- the chain of steps -------------------------------------------------------------------------------
class DenoisingThermodynamicModel(nn.Module):
    """T conditional Ising models (see the module docstring); step index 0 denoises t_1 -> t_0."""

    def __init__(self, *, graph: str, num_pixels: int, grayscale_levels: int = 1, num_classes: int = 1,
                 num_label_spots: int = 1, num_steps: int = 1, time_grid_kind: str = "log", time_offset: float = 0.0,
                 image_rate: float = 0.8, label_rate: float = 0.2, seed: int = 0, compile: bool = False,
                 threads: ThreadBudget | None = None, correlation_penalty: list[float] | None = None, placement: str = "random",
                 image_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.graph = TorusGraph.from_preset(graph)
        self.num_pixels, self.levels = int(num_pixels), int(grayscale_levels)
        self.num_classes, self.label_spots = int(num_classes), int(num_label_spots)
        self.num_steps, self.time_offset = int(num_steps), float(time_offset)
        self.image_rate, self.label_rate = float(image_rate), float(label_rate)
        self.times = time_grid(self.num_steps, time_grid_kind)
        self.num_image_nodes = self.num_pixels * self.levels
        self.num_label_nodes = self.num_classes * self.label_spots
        if placement not in ("random", "image", "reference"):
            raise ConfigError(f"config key 'model.placement': expected 'random', 'image' or 'reference', got '{placement}'")
        if placement == "image" and (image_shape is None or int(np.prod(image_shape)) != self.num_pixels):
            raise ConfigError(f"model.placement 'image' needs the image shape of the {self.num_pixels} pixels, got {image_shape}")
        steps = []
        for k in range(self.num_steps):
            dt = self.times[k + 1] - self.times[k]
            if placement == "random":
                visible = self.graph.place_visible(self.num_image_nodes + self.num_label_nodes, seed + k)
            elif placement == "reference":
                visible = self.graph.place_reference(self.num_image_nodes, self.num_label_nodes, seed + k)
            else:
                visible = self.graph.place_image(tuple(image_shape), self.levels, self.num_label_nodes, seed + k)
            steps.append(IsingDenoisingStep(self.graph, self.num_image_nodes, self.num_label_nodes, visible,
                                            input_coupling(self.image_rate, dt), input_coupling(self.label_rate, dt)))
        self.steps = nn.ModuleList(steps)
        penalty = torch.tensor(correlation_penalty or [0.0] * self.num_steps, dtype=torch.float32)
        if penalty.shape != (self.num_steps,):
            raise ConfigError(f"correlation penalty: expected {self.num_steps} values (one per step), got {penalty.numel()}")
        self.register_buffer("correlation_penalty", penalty)  # λ_cp per step, adapted during training
        self.register_buffer("autocorrelation", torch.full((self.num_steps,), float("nan")))  # last measured, per step
        self.sampler = BlockGibbsSampler(self.graph, compile=compile, threads=threads)

    # --- encoding -----------------------------------------------------------------------------------
    def encode(self, levels: torch.Tensor, label_bits: torch.Tensor) -> torch.Tensor:
        """Image levels (B, P) and label bits (B, classes x spots) -> visible spins (B, visible)."""
        return torch.cat([thermometer_encode(levels, self.levels), label_bits.float() * 2 - 1], dim=1)

    def label_bits(self, labels: torch.Tensor) -> torch.Tensor:
        """Classes (B,) -> one-hot bits tiled `num_label_spots` times (B, classes x spots)."""
        return torch.nn.functional.one_hot(labels.long(), self.num_classes).repeat(1, self.label_spots)

    def decode(self, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible spins -> image levels (B, P) and label bits (B, classes x spots)."""
        levels = thermometer_decode(visible[:, : self.num_image_nodes], self.levels)
        return levels, (visible[:, self.num_image_nodes:] > 0).long()

    def label_votes(self, label_bits: torch.Tensor) -> torch.Tensor:
        """Fraction of a class's spots that are on: (B, classes)."""
        return label_bits.unflatten(1, (self.label_spots, self.num_classes)).float().mean(1)

    def noised_pair(self, step: int, levels: torch.Tensor, label_bits: torch.Tensor, uniform) -> tuple[torch.Tensor, ...]:
        """(x_start, labels_start, x_end, labels_end) of step `step` from clean data, with the
        reference's time offset: t_s (1 - offset), t_e (1 + offset)."""
        t_s = self.times[step] * (1 - self.time_offset)
        t_e = self.times[step + 1] * (1 + self.time_offset)
        x_s = perturb_levels(levels, self.levels, flip_probability(self.image_rate, t_s), uniform)
        l_s = perturb_levels(label_bits, 1, flip_probability(self.label_rate, t_s), uniform)
        x_e = perturb_levels(x_s, self.levels, flip_probability(self.image_rate, t_e - t_s), uniform)
        l_e = perturb_levels(l_s, 1, flip_probability(self.label_rate, t_e - t_s), uniform)
        return x_s, l_s, x_e, l_e

    # --- training -------------------------------------------------------------------------------------
    def phase(self, step: int, targets: torch.Tensor | None, inputs: torch.Tensor, schedule: SamplingSchedule,
              key: torch.Tensor, beta: float = 1.0, persistent: SamplingSchedule | None = None) -> PhaseMoments:
        """Positive phase (`targets` = visible outputs clamped) or negative phase (`targets` None).

        Chains start from the biases ("Hinton init"), except the negative phase of an unconditional step
        when `persistent` is given: its distribution is the same for every batch, so its chains carry
        over from the previous batch (persistent contrastive divergence) and run the `persistent`
        schedule, usually with a shorter warm-up. Conditional steps always start afresh: their negative
        phase depends on the batch's inputs.
        """
        model = self.steps[step]
        biases = (model.colour0_bias(inputs), model.bias1)
        weights = (model.weight, self.graph.colour_one_weights(model.weight))
        batch = inputs.shape[0]
        carry = targets is None and persistent is not None and model.unconditional
        if carry and model.chains0.shape[-1] == batch:
            state, schedule = SpinState(model.chains0.clone(), model.chains1.clone()), persistent
        else:
            state = self.sampler.chains(batch, biases, beta, key, device=inputs.device)
        free0 = None
        if targets is not None:
            model.clamp_visible(state, targets)
            free0 = model.latent0
        moments = self.sampler.run(state, weights, biases, schedule, key, beta=beta, free=(free0, None))
        if carry:
            model.chains0, model.chains1 = state.colour0, state.colour1
        return PhaseMoments(*moments.averages())

    def forward(self, levels: torch.Tensor, labels: torch.Tensor, schedule: SamplingSchedule, keys: torch.Tensor,
                uniform, beta: float = 1.0, persistent: SamplingSchedule | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Surrogate loss of one batch for every step (gradient = the DTM estimate; value = mean squared
        moment mismatch) and per-step extras. `keys` (T, 2, 2): Philox keys per step and phase;
        `persistent`: the schedule of persistent negative chains of unconditional steps (see `phase`)."""
        label_bits = self.label_bits(labels).to(levels.dtype)
        surrogate, mismatch, extras = 0.0, 0.0, {}
        with torch.no_grad():
            estimates = []
            for k, model in enumerate(self.steps):
                x_s, l_s, x_e, l_e = self.noised_pair(k, levels, label_bits, uniform)
                targets, inputs = self.encode(x_s, l_s), self.encode(x_e, l_e)
                pos = self.phase(k, targets, inputs, schedule, keys[k, 0], beta)
                neg = self.phase(k, None, inputs, schedule, keys[k, 1], beta, persistent)
                outer = self.sampler.edge_correlation(neg.mean0.unsqueeze(-1), neg.mean1.unsqueeze(-1))
                estimates.append(ising_gradients(pos, neg, outer, beta, float(self.correlation_penalty[k])))
                err = ((pos.mean0 - neg.mean0) ** 2).mean() + ((pos.mean1 - neg.mean1) ** 2).mean() \
                    + ((pos.corr - neg.corr) ** 2).mean()
                mismatch += float(err) / self.num_steps
                extras[f"mismatch_step{k}"] = float(err)
        for model, grads in zip(self.steps, estimates):
            for name, grad in grads.items():
                surrogate = surrogate + (getattr(model, name) * grad).sum()
        loss = surrogate - surrogate.detach() + mismatch
        return loss, extras

    # --- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: int, sweeps: int, key_source, beta_start: float = 0.8, beta_end: float = 1.2,
                 labels: torch.Tensor | None = None, uniform=None, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Run the chain from x_T ~ Bernoulli(0.5) down to x_0.

        Each step runs `sweeps` sweeps with β annealed linearly from `beta_start` to `beta_end`,
        chains started from the biases at `beta_end`; its visible output is the next step's input.
        `labels` (B,) clamps the label outputs at every step (else labels are sampled).
        Returns images as levels (B, P) and label votes (B, classes): the fraction of each class's spots on.
        """
        device = device or self.steps[0].bias0.device
        levels = perturb_levels(torch.zeros(batch, self.num_pixels, dtype=torch.long, device=device), self.levels, 1.0, uniform)
        label_bits = perturb_levels(torch.zeros(batch, self.num_label_nodes, dtype=torch.long, device=device), 1, 1.0, uniform)
        clamp = None
        if labels is not None:
            label_bits = self.label_bits(labels.to(device))
            clamp = label_bits.float() * 2 - 1
        betas = np.linspace(beta_start, beta_end, sweeps).tolist()
        schedule = SamplingSchedule(sweeps, 1, 1)
        for k in reversed(range(self.num_steps)):
            model = self.steps[k]
            inputs = self.encode(levels, label_bits)
            biases = (model.colour0_bias(inputs), model.bias1)
            weights = (model.weight, self.graph.colour_one_weights(model.weight))
            state = self.sampler.chains(batch, biases, beta_end, key_source(), device=device)
            free0 = None
            if clamp is not None:
                model.clamp_visible(state, clamp, slice(self.num_image_nodes, None))
                free0 = model.latent0.clone().view(-1)
                free0[model.visible_sites[: self.num_image_nodes]] = True
                free0 = free0.view_as(model.latent0)
            self.sampler.run(state, weights, biases, schedule, key_source(), beta=betas, free=(free0, None), collect=False)
            levels, label_bits = self.decode(model.read_visible(state))
        return {"levels": levels, "label_votes": self.label_votes(label_bits)}
