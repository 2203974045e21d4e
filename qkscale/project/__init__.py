"""Joint query-key projections: backends behind one interface, sampling, placement, the stage."""

from qkscale.project.base import DIMS, METHODS, Backend
from qkscale.project.registry import BACKEND_CHOICES, BACKENDS, auto_backend, get_backend
from qkscale.project.run import (
    DEFAULT_SAMPLE,
    METRICS,
    ProjectionSettings,
    ProjectStage,
    plan_projection,
    project,
    project_head,
)

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "DEFAULT_SAMPLE",
    "DIMS",
    "METHODS",
    "METRICS",
    "Backend",
    "ProjectStage",
    "ProjectionSettings",
    "auto_backend",
    "get_backend",
    "plan_projection",
    "project",
    "project_head",
]
