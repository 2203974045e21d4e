"""Backend names -> classes, and the one place where ``auto`` is resolved."""

from __future__ import annotations

import importlib.util

from qkscale.errors import OptionError
from qkscale.project.backends.cpu import CPUBackend
from qkscale.project.backends.cuml import CumlBackend
from qkscale.project.backends.torchdr import TorchdrBackend
from qkscale.project.base import Backend

BACKENDS: dict[str, type[Backend]] = {"cuml": CumlBackend, "torchdr": TorchdrBackend, "cpu": CPUBackend}
BACKEND_CHOICES = ("auto", *BACKENDS)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cupy_sees_gpu() -> bool:
    if not _installed("cupy"):
        return False
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: cupy raises its own runtime errors
        return False


def _torch_sees_gpu() -> bool:
    if not _installed("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def auto_backend() -> str:
    """cuML where it and a GPU are present, else torchdr on a CUDA GPU, else the CPU libraries."""
    if _installed("cuml") and _cupy_sees_gpu():
        return "cuml"
    if _installed("torchdr") and _torch_sees_gpu():
        return "torchdr"
    return "cpu"


def get_backend(backend: str | Backend = "auto") -> Backend:
    """A backend instance from its name (or ``auto``); a ready instance is returned as it is."""
    if isinstance(backend, Backend):
        return backend
    name = auto_backend() if backend == "auto" else backend
    if name not in BACKENDS:
        raise OptionError(f"unknown backend {backend!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if name == "cuml" and _installed("cuml") and not _cupy_sees_gpu():
        raise OptionError("backend 'cuml' needs an NVIDIA GPU, and none is visible here")
    return BACKENDS[name]()
