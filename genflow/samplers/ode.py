"""ODE solvers for sampling flows: integrate ``dx/dt = velocity(x, t)`` from ``t0`` to ``t1``.

The velocity is a plain callable, so any model/objective pair can be sampled: wrap the network and
``FlowMatchingObjective.to_velocity`` in a closure. Gradients are not disabled here; wrap the call in
``torch.no_grad()`` when sampling.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from genflow.errors import GenflowError

__all__ = ["SOLVERS", "VelocityFn", "solve_ode"]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity(x, t) -> dx/dt`` with ``x`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``."""

JumpFn = Callable[[Tensor, Tensor], Tensor]
"""``final_jump(x, t) -> x(t1)``: the state at the end time, straight from the state at ``t`` ``(B,)``."""

FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4")
SOLVERS: tuple[str, ...] = (*FIXED_STEP_SOLVERS, "dopri5")


def _euler_step(velocity: VelocityFn, x: Tensor, t: Tensor, dt: Tensor) -> Tensor:
    return x + dt * velocity(x, t)


def _midpoint_step(velocity: VelocityFn, x: Tensor, t: Tensor, dt: Tensor) -> Tensor:
    x_mid = x + 0.5 * dt * velocity(x, t)
    return x + dt * velocity(x_mid, t + 0.5 * dt)


def _rk4_step(velocity: VelocityFn, x: Tensor, t: Tensor, dt: Tensor) -> Tensor:
    k1 = velocity(x, t)
    k2 = velocity(x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = velocity(x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = velocity(x + dt * k3, t + dt)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": _euler_step, "midpoint": _midpoint_step, "rk4": _rk4_step}


def solve_ode(
    velocity: VelocityFn,
    x0: Tensor,
    *,
    steps: int = 20,
    solver: str = "euler",
    t0: float = 0.0,
    t1: float = 1.0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    return_path: bool = False,
    final_jump: JumpFn | None = None,
) -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``x(t0) = x0`` to ``t1``.

    With genflow's flow convention (t = 0 noise, t = 1 data) the defaults map noise to data.

    Args:
        velocity: ``velocity(x, t)``, ``x`` shape ``(B, ...)``, ``t`` shape ``(B,)`` (all equal).
        x0: Initial state, shape ``(B, ...)``.
        steps: Number of uniform steps for fixed-step solvers; for ``dopri5`` the number of output
            intervals when ``return_path`` is set (its own steps are adaptive).
        solver: One of :data:`SOLVERS`: ``euler``, ``midpoint``, ``rk4`` (fixed step) or ``dopri5``
            (adaptive, via torchdiffeq).
        t0: Start time.
        t1: End time (may be smaller than ``t0`` to integrate backwards).
        atol: Absolute tolerance of ``dopri5``.
        rtol: Relative tolerance of ``dopri5``.
        return_path: Return every state on the uniform time grid instead of only the last.
        final_jump: For a field that cannot be evaluated at ``t1`` (a clean-data prediction turned
            into a velocity divides by ``sigma_t = 0`` there): the last of the ``steps`` intervals
            is then this one evaluation at its start instead of a solver step, so no stage of any
            solver reaches ``t1``; ``dopri5`` integrates adaptively up to that last grid point.
            The same device as diffusers' ``lower_order_final``: the final step to zero noise is a
            first-order (DDIM) jump. With ``steps = 1`` the jump starts at ``t0``.

    Returns:
        ``x(t1)``, shape ``(B, ...)``; or with ``return_path`` the states at
        ``linspace(t0, t1, steps + 1)``, shape ``(steps + 1, B, ...)``.

    Raises:
        GenflowError: Unknown solver or ``steps < 1``.
    """
    if solver not in SOLVERS:
        raise GenflowError(f"unknown ODE solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if steps < 1:
        raise GenflowError(f"ODE steps must be >= 1, got {steps}")

    batch_size = x0.shape[0]
    times = torch.linspace(t0, t1, steps + 1, device=x0.device, dtype=x0.dtype)
    solved = times[:-1] if final_jump is not None else times  # the grid the solver itself covers

    def batched_time(t: Tensor) -> Tensor:
        return t.expand(batch_size)

    if len(solved) == 1:
        path = [x0]
    elif solver == "dopri5":
        from torchdiffeq import odeint  # only the adaptive solver needs it

        grid = solved if return_path else solved[[0, -1]]
        # step_t: land on the end time instead of stepping past it and interpolating back, so the
        # field is never evaluated beyond the interval (where a flow may not be defined)
        states = odeint(
            lambda t, x: velocity(x, batched_time(t)), x0, grid, method="dopri5", atol=atol, rtol=rtol,
            options={"step_t": grid[-1:]},
        )
        path = list(states) if return_path else [x0, states[-1]]
    else:
        step = _STEPS[solver]
        path = [x0]
        for t_start, t_end in zip(solved[:-1], solved[1:]):
            path.append(step(velocity, path[-1], batched_time(t_start), t_end - t_start))
            if not return_path:
                path = path[-1:]
    if final_jump is not None:
        path.append(final_jump(path[-1], batched_time(solved[-1])))
    return torch.stack(path) if return_path else path[-1]
