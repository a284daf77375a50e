"""Discrete-time denoising diffusion (DDPM) on top of diffusers' noise schedules.

Time convention (diffusers', not the flow one): integer timesteps ``0 .. T-1``, where timestep 0 is
nearly clean data and ``T - 1`` nearly pure noise. The forward process is
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``. The network sees the float time
``timestep / T`` in [0, 1) (:meth:`DiffusionObjective.network_time`), so one network class serves
both flow and diffusion objectives.

:class:`DiffusionObjective` owns the schedule and says what the network regresses onto; it never
sees the network. Sampling lives in :mod:`genflow.samplers.diffusion`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.errors import ConfigError
from genflow.extras import import_optional

__all__ = ["BetaSchedule", "BETA_SCHEDULES", "DiffusionPrediction", "PREDICTION_TYPES", "DiffusionObjective"]

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)

DiffusionPrediction = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = get_args(DiffusionPrediction)


def _expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample coefficients ``(B,)`` to ``(B, 1, ..., 1)`` so they broadcast over ``x``."""
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


class DiffusionObjective:
    """DDPM training objective: noising, regression target, and clean-sample estimates.

    Args:
        num_train_timesteps: Number of discrete timesteps ``T``.
        beta_schedule: ``linear | scaled_linear | squaredcos_cap_v2`` (diffusers' names and defaults,
            ``beta_start=1e-4``, ``beta_end=0.02`` for the linear ones).
        prediction_type: What the network outputs: ``epsilon`` (the noise), ``v_prediction``
            (``sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0``) or ``sample`` (``x0``).

    Attributes:
        scheduler: The ``diffusers.DDPMScheduler`` holding the schedule.
        betas: Per-timestep betas, shape ``(T,)``, float32, on CPU.
        alphas_cumprod: ``alpha_bar_t``, shape ``(T,)``, float32; moved to the device of the last call.

    Raises:
        ConfigError: Unknown schedule or prediction type, or ``num_train_timesteps < 2``.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: BetaSchedule = "squaredcos_cap_v2",
        prediction_type: DiffusionPrediction = "epsilon",
    ) -> None:
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ConfigError(f"model.path.num_train_timesteps={num_train_timesteps!r} must be an integer >= 2")
        if beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown model.path.beta_schedule={beta_schedule!r}; valid: {' | '.join(BETA_SCHEDULES)}"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"unknown model.path.prediction_type={prediction_type!r}; valid: {' | '.join(PREDICTION_TYPES)}"
            )
        # imported here: diffusers takes seconds to import, and `import genflow.objectives` should stay
        # cheap for the CLI and for recipes that never use diffusion
        diffusers = import_optional("diffusers", extra="diffusion", needed_by="DDPM / DDIM diffusion (namo-diffusion)")

        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.scheduler = diffusers.DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type
        )
        self.betas = self.scheduler.betas.clone()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.clone()

    def __repr__(self) -> str:
        return (
            f"DiffusionObjective(num_train_timesteps={self.num_train_timesteps}, "
            f"beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r})"
        )

    def _coefficients(self, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(sqrt(alpha_bar), sqrt(1 - alpha_bar))`` at ``timesteps``, shaped ``(B, 1, ...)`` like ``like``."""
        if timesteps.ndim != 1 or timesteps.shape[0] != like.shape[0]:
            raise ValueError(f"timesteps must have shape ({like.shape[0]},), got {tuple(timesteps.shape)}")
        # kept on the data's device after the first call, so training steps do not copy it each time
        if self.alphas_cumprod.device != like.device:
            self.alphas_cumprod = self.alphas_cumprod.to(like.device)
        alpha_bar = self.alphas_cumprod.to(like.dtype)[timesteps.to(like.device)]
        # same operations as diffusers' add_noise / get_velocity, so the results match bit for bit
        return _expand_like(alpha_bar**0.5, like), _expand_like((1 - alpha_bar) ** 0.5, like)

    def sample_timesteps(self, uniform: Tensor) -> Tensor:
        """Training timesteps, uniform over ``0 .. T-1``, from uniform noise.

        Taking the noise instead of drawing it keeps the randomness with the caller (the engine's
        seeded per-step generator, e.g. ``ctx.rand(B)``), never the global RNG.

        Args:
            uniform: Uniform samples in [0, 1), shape ``(B,)``.

        Returns:
            Integer timesteps, shape ``(B,)``, int64, on the device of ``uniform``.
        """
        # clamp: float rounding of u * T can reach T for u just below 1
        return (uniform * self.num_train_timesteps).long().clamp_(0, self.num_train_timesteps - 1)

    def network_time(self, timesteps: Tensor) -> Tensor:
        """The network's time input ``timestep / T`` in [0, 1), shape ``(B,)``, float32."""
        return timesteps.float() / self.num_train_timesteps

    def add_noise(self, *, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Forward process ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``.

        Args:
            x0: Clean data, shape ``(B, ...)``.
            noise: Standard normal noise, same shape.
            timesteps: Integer timesteps, shape ``(B,)``.

        Returns:
            Noisy data ``x_t``, shape ``(B, ...)`` (equal to ``DDPMScheduler.add_noise``).
        """
        signal, noise_scale = self._coefficients(timesteps, x0)
        return signal * x0 + noise_scale * noise

    def training_target(self, *, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the network should output at ``x_t = add_noise(x0=x0, noise=noise, timesteps=timesteps)``, shape ``(B, ...)``.

        ``epsilon``: the noise; ``v_prediction``: ``sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0``
        (equal to ``DDPMScheduler.get_velocity``); ``sample``: ``x0``.
        """
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        signal, noise_scale = self._coefficients(timesteps, x0)
        return signal * noise - noise_scale * x0

    def predicted_clean(self, model_output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """Clean-data estimate ``x0_hat`` implied by a network output, e.g. for an auxiliary loss on ``x0``.

        For ``epsilon`` this divides by ``sqrt(alpha_bar_t)``, which is tiny at the noisiest timesteps
        (about 5e-5 at ``T - 1`` for ``squaredcos_cap_v2``): there ``x0_hat`` amplifies any error in the
        predicted noise, so weight or mask such a loss by timestep.

        Args:
            model_output: Network output in this objective's prediction type, shape ``(B, ...)``.
            x_t: The noisy input the network saw, shape ``(B, ...)``.
            timesteps: Integer timesteps, shape ``(B,)``.

        Returns:
            ``x0_hat``, shape ``(B, ...)``.
        """
        if self.prediction_type == "sample":
            return model_output
        signal, noise_scale = self._coefficients(timesteps, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - noise_scale * model_output) / signal
        return signal * x_t - noise_scale * model_output

    def loss(self, model_output: Tensor, *, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Mean squared error to :meth:`training_target`, computed in float32 (a scalar)."""
        target = self.training_target(x0=x0, noise=noise, timesteps=timesteps)
        # float32 even under bf16/fp16 autocast: the squared errors of a good model are tiny
        return F.mse_loss(model_output.float(), target.float())
