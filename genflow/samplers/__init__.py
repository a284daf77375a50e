"""Samplers: take a plain velocity/score callable, never a network or a schedule object."""

from genflow.samplers.ode import SOLVERS, VelocityFn, solve_ode

__all__ = ["SOLVERS", "VelocityFn", "solve_ode"]
