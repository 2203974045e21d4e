"""The interface every projection backend implements, and what all of them share."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import ClassVar

import numpy as np

from qkscale.errors import OptionError
from qkscale.stage_options import DIMS, METHODS  # noqa: F401 (declared with the options, used here)

N_NEIGHBORS = 15  # UMAP's neighbourhood, as in AttentionViz
MIN_DIST = 0.1  # UMAP's
PERPLEXITY = 30.0  # t-SNE's
# Fewest points each method can fit: UMAP needs a few neighbourhoods, t-SNE more than 3x its perplexity.
MIN_POINTS = {"umap": 4 * N_NEIGHBORS, "tsne": int(3 * PERPLEXITY) + 1, "pca": 8}


class Backend(ABC):
    """Fits one embedding method on an in-memory sample: ``embed(x, method, dims, seed)``.

    A backend only fits; :mod:`qkscale.project.run` places the points left out of the sample.
    ``libraries`` maps each method to (import name, pip package) of the library that runs it.
    """

    name: ClassVar[str]
    libraries: ClassVar[dict[str, tuple[str, str]]]
    # Methods x dims this backend cannot run, with the reason shown to the user.
    unsupported: ClassVar[dict[tuple[str, int], str]] = {}

    @property
    def device(self) -> str:
        """Where the backend computes: 'cpu' or a torch CUDA device."""
        return "cpu"

    def check(self, method: str, dims: int) -> None:
        """Raise :class:`OptionError` unless this backend can run ``method`` in ``dims`` dimensions."""
        if method not in METHODS:
            raise OptionError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if dims not in DIMS:
            raise OptionError(f"--dims must be 2 or 3, not {dims}")
        reason = self.unsupported.get((method, dims))
        if reason:
            raise OptionError(f"backend {self.name!r} cannot compute {dims}D {method}: {reason}")
        self.library(method)

    def library(self, method: str) -> ModuleType:
        """Import the library that runs ``method``, or say which package to install."""
        module, package = self.libraries[method]
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise OptionError(
                f"backend {self.name!r} needs the package {package} for {method} (pip install {package}): {exc}"
            ) from None

    def describe(self, method: str, dims: int) -> str:
        """The library that ran ``method`` in ``dims`` dimensions, with its version, for the record."""
        package = self.libraries[method][1]
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return package

    def embed(self, x: np.ndarray, method: str, dims: int, seed: int) -> np.ndarray:
        """``[n, dims]`` float32 embedding of the rows of ``x`` (float32, Euclidean geometry)."""
        fit = {"umap": self._umap, "tsne": self._tsne, "pca": self._pca}[method]
        return np.ascontiguousarray(fit(x, dims, seed), dtype=np.float32)

    # Each fits one method on ``x`` and returns the embedding as an array.
    @abstractmethod
    def _umap(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray: ...

    @abstractmethod
    def _tsne(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray: ...

    @abstractmethod
    def _pca(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray: ...
