import math

import pytest
import torch

from genflow.errors import GenflowError
from genflow.samplers.ode import SOLVERS, solve_ode


def decay(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = -x, exact solution x(t) = x(0) exp(-t)."""
    assert t.shape == (x.shape[0],)
    return -x


def _error(solver: str, steps: int = 10) -> float:
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2)
    x1 = solve_ode(decay, x0, steps=steps, solver=solver)
    return (x1 - x0 * math.exp(-1.0)).abs().max().item()


def test_fixed_step_errors_shrink_with_solver_order():
    euler, midpoint, rk4 = _error("euler"), _error("midpoint"), _error("rk4")
    assert euler > midpoint > rk4
    assert rk4 < 1e-6


def test_dopri5_is_accurate():
    assert _error("dopri5") < 1e-4


def test_euler_error_is_first_order():
    assert _error("euler", steps=20) == pytest.approx(_error("euler", steps=10) / 2, rel=0.1)


@pytest.mark.parametrize("solver", SOLVERS)
def test_return_path_gives_every_grid_state(solver):
    x0 = torch.ones(2, 3, dtype=torch.float64)
    path = solve_ode(decay, x0, steps=4, solver=solver, return_path=True)
    assert path.shape == (5, 2, 3)
    torch.testing.assert_close(path[0], x0)
    torch.testing.assert_close(path[-1], solve_ode(decay, x0, steps=4, solver=solver))


def test_time_runs_from_t0_to_t1():
    seen = []

    def record(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    solve_ode(record, torch.zeros(2, 1), steps=4, solver="euler", t0=0.0, t1=1.0)
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_bad_solver_or_steps_raise_genflow_errors():
    with pytest.raises(GenflowError, match="euler, midpoint, rk4, dopri5"):
        solve_ode(decay, torch.zeros(1, 1), solver="heun")
    with pytest.raises(GenflowError, match="steps"):
        solve_ode(decay, torch.zeros(1, 1), steps=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_final_jump_replaces_the_last_interval_and_never_evaluates_t1(solver):
    seen = []

    def record(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    def jump(x, t):
        seen.append(("jump", t[0].item()))
        return x + 1

    out = solve_ode(record, torch.zeros(2, 1), steps=4, solver=solver, final_jump=jump)
    torch.testing.assert_close(out, torch.ones(2, 1))
    assert seen[-1] == ("jump", pytest.approx(0.75))
    assert all(t < 0.75 + 1e-6 for t in seen[:-1])
    path = solve_ode(record, torch.zeros(2, 1), steps=4, solver=solver, final_jump=jump, return_path=True)
    assert path.shape == (5, 2, 1) and path[-1].eq(1).all()


def test_rk4_with_a_clean_data_prediction_is_accurate_with_the_final_jump():
    """A slightly wrong clean-data estimate turned into a velocity is divided by sigma_t -> 0 at t = 1:
    RK4's last stage blows the error up; the jump to the estimate does not."""
    from genflow.objectives import AffinePath, FlowMatchingObjective, make_scheduler

    objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")), prediction="target")
    data = torch.tensor([[0.5, -0.5]])

    def estimate(x, t):  # the data point, off by 2 % of the current state
        return data + 0.02 * x

    def velocity(x, t):
        return objective.to_velocity(estimate(x, t), x_t=x, t=t)

    def jump(x, t):
        return objective.to_target(estimate(x, t), x_t=x, t=t)

    x0 = torch.tensor([[1.0, 1.0]])
    with_jump = (solve_ode(velocity, x0, steps=5, solver="rk4", final_jump=jump) - data).abs().max()
    without = (solve_ode(velocity, x0, steps=5, solver="rk4") - data).abs().max()
    assert objective.singular_at_data
    assert with_jump < 0.03 < 10 * with_jump < without
