"""Flow matching with affine probability paths.

Time convention (used by every flow recipe in genflow, and the same as Meta's ``flow_matching``):

- ``t = 0`` is noise ``x0 ~ N(0, I)``, ``t = 1`` is data ``x1``.
- The path is ``x_t = alpha_t * x1 + sigma_t * x0`` and its velocity is
  ``u_t = d_alpha_t * x1 + d_sigma_t * x0``.
- Sampling integrates ``dx/dt = v(x, t)`` from ``t = 0`` to ``t = 1``.

The pieces stay separate, diffusers-style: a scheduler gives ``(alpha_t, sigma_t)`` and their time
derivatives, an :class:`AffinePath` turns them into path samples and converts between parametrisations,
and :class:`FlowMatchingObjective` decides what the network predicts. None of them knows the network.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from genflow.errors import ConfigError

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "PolynomialConvexScheduler",
    "CosineScheduler",
    "VPScheduler",
    "LinearVPScheduler",
    "SCHEDULERS",
    "make_scheduler",
    "PathSample",
    "AffinePath",
    "Prediction",
    "PREDICTIONS",
    "FlowMatchingObjective",
]


@dataclass
class SchedulerOutput:
    """Path coefficients at times ``t``; every field has the shape of ``t``."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


class Scheduler(ABC):
    """Gives ``alpha_t`` (data weight), ``sigma_t`` (noise weight) and their time derivatives."""

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput:
        """Coefficients at times ``t`` in [0, 1], any shape."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class CondOTScheduler(Scheduler):
    """Conditional optimal transport (rectified flow): ``alpha = t``, ``sigma = 1 - t``."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        return SchedulerOutput(
            alpha=t, sigma=1 - t, d_alpha=torch.ones_like(t), d_sigma=-torch.ones_like(t)
        )


class PolynomialConvexScheduler(Scheduler):
    """``alpha = t**n``, ``sigma = 1 - t**n``; ``n = 1`` is CondOT."""

    def __init__(self, n: float = 2.0) -> None:
        if n <= 0:
            raise ConfigError(f"PolynomialConvexScheduler needs n > 0, got n={n}")
        self.n = n

    def __call__(self, t: Tensor) -> SchedulerOutput:
        d_alpha = self.n * t ** (self.n - 1)
        return SchedulerOutput(alpha=t**self.n, sigma=1 - t**self.n, d_alpha=d_alpha, d_sigma=-d_alpha)


class CosineScheduler(Scheduler):
    """``alpha = sin(pi t / 2)``, ``sigma = cos(pi t / 2)``."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        half_pi = math.pi / 2
        sin, cos = torch.sin(half_pi * t), torch.cos(half_pi * t)
        return SchedulerOutput(alpha=sin, sigma=cos, d_alpha=half_pi * cos, d_sigma=-half_pi * sin)


class VPScheduler(Scheduler):
    """Variance-preserving (score-SDE) path with a linear beta schedule, time-reversed so t = 1 is data.

    ``T(t) = (1 - t)^2 (beta_max - beta_min) / 2 + (1 - t) beta_min``,
    ``alpha = exp(-T / 2)``, ``sigma = sqrt(1 - exp(-T))``. ``d_sigma`` is infinite at ``t = 1``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = beta_min
        self.beta_max = beta_max

    def __call__(self, t: Tensor) -> SchedulerOutput:
        b, big_b = self.beta_min, self.beta_max
        integral = 0.5 * (1 - t) ** 2 * (big_b - b) + (1 - t) * b
        d_integral = -(1 - t) * (big_b - b) - b
        alpha = torch.exp(-0.5 * integral)
        sigma = torch.sqrt(1 - torch.exp(-integral))
        return SchedulerOutput(
            alpha=alpha,
            sigma=sigma,
            d_alpha=-0.5 * d_integral * alpha,
            d_sigma=0.5 * d_integral * torch.exp(-integral) / sigma,
        )


class LinearVPScheduler(Scheduler):
    """``alpha = t``, ``sigma = sqrt(1 - t^2)`` (variance preserving); ``d_sigma`` is infinite at t = 1."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        sigma = (1 - t**2) ** 0.5
        return SchedulerOutput(alpha=t, sigma=sigma, d_alpha=torch.ones_like(t), d_sigma=-t / sigma)


SCHEDULERS: dict[str, type[Scheduler]] = {
    "condot": CondOTScheduler,
    "cosine": CosineScheduler,
    "vp": VPScheduler,
    "linear_vp": LinearVPScheduler,
    "polynomial": PolynomialConvexScheduler,
}


def make_scheduler(name: str, **kwargs: float) -> Scheduler:
    """Build a scheduler by config name.

    Args:
        name: One of ``condot | cosine | vp | linear_vp | polynomial``.
        **kwargs: Scheduler arguments, e.g. ``n=2`` for ``polynomial``, ``beta_min``/``beta_max`` for ``vp``.

    Raises:
        ConfigError: Unknown name or arguments the scheduler does not take.
    """
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    try:
        return SCHEDULERS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments {kwargs} for scheduler {name!r}: {err}") from None


def _expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample coefficients ``(B,)`` to ``(B, 1, ..., 1)`` so they broadcast over ``x``.

    0-d coefficients (a shared scalar time) broadcast as they are.
    """
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (x.ndim - 1)))


@dataclass
class PathSample:
    """A point on the conditional path.

    Attributes:
        x_t: ``x_t = alpha_t x1 + sigma_t x0``, shape of the data ``(B, ...)``.
        dx_t: Conditional velocity ``d_alpha_t x1 + d_sigma_t x0``, shape ``(B, ...)``.
        t: Times, shape ``(B,)``.
    """

    x_t: Tensor
    dx_t: Tensor
    t: Tensor


class AffinePath:
    """The affine path ``x_t = alpha_t x1 + sigma_t x0`` of a scheduler, plus parametrisation conversions.

    All methods take ``t`` of shape ``(B,)`` (one time per sample, broadcast over the other axes of the
    data) or a 0-d tensor shared by the whole batch.

    Args:
        scheduler: Gives ``alpha_t, sigma_t`` and their derivatives.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    def _coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.scheduler(t)
        return tuple(_expand_like(c, like) for c in (out.alpha, out.sigma, out.d_alpha, out.d_sigma))

    def sample(self, *, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Point and conditional velocity on the path between noise and data.

        Args:
            x1: Data, shape ``(B, ...)``.
            x0: Noise, same shape as ``x1``.
            t: Times in [0, 1], shape ``(B,)``.

        Returns:
            ``PathSample(x_t, dx_t, t)``.
        """
        if x1.shape != x0.shape:
            raise ValueError(f"x1 and x0 must have the same shape, got {tuple(x1.shape)} and {tuple(x0.shape)}")
        if t.ndim != 1 or t.shape[0] != x1.shape[0]:
            raise ValueError(f"t must have shape ({x1.shape[0]},), got {tuple(t.shape)}")
        alpha, sigma, d_alpha, d_sigma = self._coefficients(t, x1)
        return PathSample(x_t=alpha * x1 + sigma * x0, dx_t=d_alpha * x1 + d_sigma * x0, t=t)

    def target_to_velocity(self, *, x1_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Velocity from a data prediction; singular where ``sigma_t = 0`` (t = 1)."""
        alpha, sigma, d_alpha, d_sigma = self._coefficients(t, x_t)
        return (d_sigma / sigma) * x_t + ((d_alpha * sigma - d_sigma * alpha) / sigma) * x1_hat

    def epsilon_to_velocity(self, *, eps_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Velocity from a noise prediction; singular where ``alpha_t = 0`` (t = 0 for most schedulers)."""
        alpha, sigma, d_alpha, d_sigma = self._coefficients(t, x_t)
        return (d_alpha / alpha) * x_t + ((d_sigma * alpha - d_alpha * sigma) / alpha) * eps_hat

    def velocity_to_target(self, *, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Data prediction ``x1_hat`` implied by a velocity."""
        alpha, sigma, d_alpha, d_sigma = self._coefficients(t, x_t)
        det = d_alpha * sigma - d_sigma * alpha
        return (-d_sigma / det) * x_t + (sigma / det) * velocity

    def velocity_to_epsilon(self, *, velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Noise prediction ``eps_hat`` implied by a velocity."""
        alpha, sigma, d_alpha, d_sigma = self._coefficients(t, x_t)
        det = d_sigma * alpha - d_alpha * sigma
        return (-d_alpha / det) * x_t + (alpha / det) * velocity


Prediction = Literal["velocity", "noise", "target"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


class FlowMatchingObjective:
    """What the network predicts on an affine path, its regression target, and its velocity for sampling.

    ``prediction`` is ``"velocity"`` (``dx_t``), ``"noise"`` (``x0``) or ``"target"`` (``x1``).

    Args:
        path: The probability path.
        prediction: What the network outputs.
        t_eps: Keeps times inside ``[t_eps, 1 - t_eps]`` where the path is singular: ``sample_time``
            draws from that interval (VP paths have an infinite ``dx_t`` at t = 1), and ``to_velocity``
            clamps ``t`` there before converting noise/data predictions, whose conversions divide by
            ``alpha_t`` (0 at t = 0) or ``sigma_t`` (0 at t = 1). ``0`` turns both off.

    Raises:
        ConfigError: Unknown prediction type or ``t_eps`` outside ``[0, 0.5)``.
    """

    def __init__(self, path: AffinePath, prediction: Prediction = "velocity", t_eps: float = 1e-3) -> None:
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if not 0.0 <= t_eps < 0.5:
            raise ConfigError(f"t_eps must be in [0, 0.5), got {t_eps}")
        self.path = path
        self.prediction = prediction
        self.t_eps = t_eps

    def __repr__(self) -> str:
        return f"FlowMatchingObjective({self.path!r}, prediction={self.prediction!r}, t_eps={self.t_eps})"

    def sample_time(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training times, uniform in ``[t_eps, 1 - t_eps]``.

        Args:
            batch_size: Number of times ``B``.
            generator: Source of randomness, for reproducible runs. Drawn on its own device.
            device: Where the result lives (defaults to the generator's device, else CPU).

        Returns:
            Times, shape ``(B,)``, float32.
        """
        draw_device = generator.device if generator is not None else device
        t = torch.rand(batch_size, generator=generator, device=draw_device)
        t = self.t_eps + (1 - 2 * self.t_eps) * t  # affine, so no point mass at the edges
        return t.to(device) if device is not None else t

    def training_target(self, sample: PathSample, *, x0: Tensor, x1: Tensor) -> Tensor:
        """What the network should output for this path sample, shape ``(B, ...)``."""
        if self.prediction == "velocity":
            return sample.dx_t
        if self.prediction == "noise":
            return x0
        return x1

    def to_velocity(self, prediction: Tensor, *, x_t: Tensor, t: Tensor) -> Tensor:
        """Velocity implied by a network output, for the ODE sampler.

        Args:
            prediction: Network output, shape ``(B, ...)``.
            x_t: Current state, shape ``(B, ...)``.
            t: Times, shape ``(B,)`` or 0-d. Clamped to ``[t_eps, 1 - t_eps]`` for noise/data
                predictions, where the conversion would otherwise divide by zero at the ends.

        Returns:
            Velocity, shape ``(B, ...)``.
        """
        if self.prediction == "velocity":
            return prediction
        t = t.clamp(self.t_eps, 1 - self.t_eps)
        if self.prediction == "noise":
            return self.path.epsilon_to_velocity(eps_hat=prediction, x_t=x_t, t=t)
        return self.path.target_to_velocity(x1_hat=prediction, x_t=x_t, t=t)

    @property
    def singular_at_data(self) -> bool:
        """Whether :meth:`to_velocity` divides by ``sigma_t``, which is 0 at t = 1: true for ``target``.

        Samplers should then not evaluate the velocity at t = 1 (``solve_ode(final_jump=...)``).
        """
        return self.prediction == "target"

    def to_target(self, prediction: Tensor, *, x_t: Tensor, t: Tensor) -> Tensor:
        """The clean-data estimate ``x1_hat`` implied by a network output at ``(x_t, t)``, ``t < 1``.

        It is the state at t = 1 that the path reaches from ``x_t`` when the prediction is held
        fixed (``alpha_1 = 1``, ``sigma_1 = 0`` for every scheduler here): the exact last jump of a
        sampler, DDIM's update to zero noise. Noise predictions divide by ``alpha_t`` (clamped at
        ``t_eps``, as in :meth:`to_velocity`).
        """
        if self.prediction == "target":
            return prediction
        if self.prediction == "velocity":
            return self.path.velocity_to_target(velocity=prediction, x_t=x_t, t=t)
        out = self.path.scheduler(t.clamp(self.t_eps, 1 - self.t_eps))
        alpha, sigma = _expand_like(out.alpha, x_t), _expand_like(out.sigma, x_t)
        return (x_t - sigma * prediction) / alpha

    def loss(self, prediction: Tensor, sample: PathSample, *, x0: Tensor, x1: Tensor) -> Tensor:
        """Mean squared error between the network output and :meth:`training_target` (a scalar)."""
        return F.mse_loss(prediction, self.training_target(sample, x0=x0, x1=x1))
