"""Samplers: take a plain velocity/score callable, never a network or a schedule object."""

from genflow.samplers.diffusion import DIFFUSION_SAMPLERS, DenoiseFn, diffusion_nfe, sample_diffusion
from genflow.samplers.ode import SOLVERS, VelocityFn, solve_ode

__all__ = [
    "DIFFUSION_SAMPLERS",
    "SOLVERS",
    "DenoiseFn",
    "VelocityFn",
    "diffusion_nfe",
    "sample_diffusion",
    "solve_ode",
]
