"""Training objectives: probability paths and what the network regresses onto.

An objective never knows the network; a recipe feeds it network outputs.
"""

from genflow.objectives.diffusion import BETA_SCHEDULES, PREDICTION_TYPES, DiffusionObjective
from genflow.objectives.flow_matching import (
    PREDICTIONS,
    SCHEDULERS,
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    FlowMatchingObjective,
    LinearVPScheduler,
    PathSample,
    PolynomialConvexScheduler,
    Prediction,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
    make_scheduler,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "PREDICTION_TYPES",
    "SCHEDULERS",
    "AffinePath",
    "CondOTScheduler",
    "CosineScheduler",
    "DiffusionObjective",
    "FlowMatchingObjective",
    "LinearVPScheduler",
    "PathSample",
    "PolynomialConvexScheduler",
    "Prediction",
    "Scheduler",
    "SchedulerOutput",
    "VPScheduler",
    "make_scheduler",
]
