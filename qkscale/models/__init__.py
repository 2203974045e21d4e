"""Model adapters: load a model, find its family, capture its own queries and keys."""

from qkscale.models.capture import QKCapture
from qkscale.models.families import FAMILIES, Family, supported_model_types
from qkscale.models.loader import DEFAULT_MODEL, ModelInfo, inspect_model, load_model, score_scales

__all__ = [
    "DEFAULT_MODEL",
    "FAMILIES",
    "Family",
    "ModelInfo",
    "QKCapture",
    "inspect_model",
    "load_model",
    "score_scales",
    "supported_model_types",
]
