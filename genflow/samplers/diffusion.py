"""Ancestral (DDPM) and implicit (DDIM) sampling for discrete-time diffusion, via diffusers' schedulers.

The denoiser is a plain callable ``denoise(x_t, t) -> model output`` with ``t = timestep / T`` in
[0, 1), the network's time input; the output is in the objective's prediction type. The sampler
takes the schedule (betas, ``T``, prediction type) from a :class:`DiffusionObjective`, never a network.
Gradients are not disabled here; wrap the call in ``torch.no_grad()`` when sampling.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from genflow.errors import ConfigError
from genflow.extras import import_optional
from genflow.objectives.diffusion import DiffusionObjective

__all__ = ["DIFFUSION_SAMPLERS", "TIMESTEP_SPACINGS", "DenoiseFn", "diffusion_nfe", "sample_diffusion"]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise(x_t, t) -> model output``, ``x_t`` of shape ``(B, ...)``, ``t`` of shape ``(B,)`` in [0, 1)."""

DIFFUSION_SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")

# Where the steps sit on 0 .. T-1. "leading" (diffusers' default) uses k * (T // steps) and so never
# reaches T - 1: it starts from N(0, I) at a timestep whose x_t keeps a little signal (alpha_bar = 0.006
# at t = 950, squaredcos_cap_v2). "trailing" (Lin et al. 2024) starts at T - 1, but there DDIM divides
# the predicted noise by sqrt(alpha_bar_999) = 5e-5, so with epsilon prediction a 0.02 error in the
# noise moves the next x_t by ~30. Measured on a 1-D two-Gaussian toy (exact denoiser + N(0, 0.02^2)
# output error, W1 to the data after 5/10/20 DDIM steps): epsilon 0.07/0.03/0.02 leading vs
# 2.9/2.5/1.7 trailing; v_prediction 0.07/0.030/0.018 vs 0.07/0.034/0.021. Hence "leading" by default;
# "trailing" is there for v_prediction with zero-terminal-SNR schedules.
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "trailing")


def _check_sampler(sampler: str) -> None:
    if sampler not in DIFFUSION_SAMPLERS:
        raise ConfigError(
            f"unknown model.sampler.sampler_type={sampler!r}; valid: {' | '.join(DIFFUSION_SAMPLERS)}"
        )


def _check_options(sampler: str, steps: int, eta: float, spacing: str, num_train_timesteps: int) -> None:
    _check_sampler(sampler)
    if not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ConfigError(f"model.sampler.steps={steps!r} must be an integer in [1, {num_train_timesteps}]")
    if not eta >= 0:
        raise ConfigError(f"model.sampler.eta={eta!r} must be >= 0")
    if spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(
            f"unknown model.sampler.timestep_spacing={spacing!r}; valid: {' | '.join(TIMESTEP_SPACINGS)}"
        )


def diffusion_nfe(sampler: str, steps: int) -> int:
    """Network evaluations one :func:`sample_diffusion` call makes: one per step for both samplers."""
    _check_sampler(sampler)
    return steps


def _make_scheduler(objective: DiffusionObjective, sampler: str, spacing: str):
    # imported here: diffusers takes seconds to import (see genflow.objectives.diffusion)
    diffusers = import_optional("diffusers", extra="diffusion", needed_by="DDPM / DDIM diffusion (namo-diffusion)")

    common = {
        "num_train_timesteps": objective.num_train_timesteps,
        # the objective's own betas, so sampling always reverses exactly the process it trained on
        "trained_betas": objective.betas.tolist(),
        "prediction_type": objective.prediction_type,
        # clamping x0_hat to [-1, 1] would assume data scaled to exactly that range; callers clamp if so
        "clip_sample": False,
        "timestep_spacing": spacing,
    }
    if sampler == "ddim":
        # set_alpha_to_one: the last step lands on clean data (alpha_bar = 1), not on timestep 0
        return diffusers.DDIMScheduler(**common, set_alpha_to_one=True)
    return diffusers.DDPMScheduler(**common)


def sample_diffusion(
    denoise: DenoiseFn,
    shape: tuple[int, ...] | torch.Size,
    objective: DiffusionObjective,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    timestep_spacing: str = "leading",
) -> Tensor:
    """Draw samples by reversing the objective's diffusion process from pure noise.

    The sampler makes :func:`diffusion_nfe` ``(sampler, steps) == steps`` calls to ``denoise``.

    Args:
        denoise: ``denoise(x_t, t)``, ``x_t`` shape ``(B, ...)``, ``t`` shape ``(B,)`` (all equal,
            ``timestep / T``); returns the network output in ``objective.prediction_type``.
        shape: Shape of the samples ``(B, ...)``.
        objective: Gives the schedule and the prediction type.
        sampler: ``ddim`` (deterministic for ``eta = 0``) or ``ddpm`` (ancestral sampling).
        steps: Number of denoising steps, in ``[1, T]``.
        eta: DDIM noise level (0: deterministic DDIM, 1: DDPM-like variance). Ignored by ``ddpm``.
        generator: Source of the starting noise and of every stochastic step, for reproducible
            samples; draws happen on the generator's device (CPU usually) and are moved to ``device``.
            ``None`` uses the global RNG.
        device: Where the samples and the denoiser's inputs live.
        timestep_spacing: ``leading`` (steps at ``k * T // steps``, first below ``T - 1``; robust for
            epsilon prediction) or ``trailing`` (first step at ``T - 1``); see the module notes.

    Returns:
        Samples, shape ``shape``, float32, on ``device``.

    Raises:
        ConfigError: Unknown sampler or spacing, ``steps`` outside ``[1, T]`` or negative ``eta``.
    """
    _check_options(sampler, steps, eta, timestep_spacing, objective.num_train_timesteps)
    scheduler = _make_scheduler(objective, sampler, timestep_spacing)
    # timesteps stay on CPU: diffusers indexes its CPU schedule tensors with them
    scheduler.set_timesteps(steps)

    draw_device = generator.device if generator is not None else device
    x = torch.randn(tuple(shape), generator=generator, device=draw_device).to(device)
    batch_size = x.shape[0]
    for timestep in scheduler.timesteps.tolist():
        t = torch.full((batch_size,), timestep / objective.num_train_timesteps, device=device)
        model_output = denoise(x, t)
        if sampler == "ddim":
            # diffusers draws the step noise from `generator` on its own device, then moves it
            x = scheduler.step(model_output, timestep, x, eta=eta, generator=generator).prev_sample
        else:
            x = scheduler.step(model_output, timestep, x, generator=generator).prev_sample
    return x
