"""torchdr backend: UMAP, t-SNE and PCA on torch, on a CUDA GPU when there is one, else on CPU."""

from __future__ import annotations

import importlib.util

import numpy as np

from qkscale.project.base import MIN_DIST, N_NEIGHBORS, PERPLEXITY, Backend


class TorchdrBackend(Backend):
    name = "torchdr"
    libraries = {method: ("torchdr", "torchdr") for method in ("umap", "tsne", "pca")}

    def __init__(self, device: str | None = None):
        self._device = device

    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    def _options(self, dims: int, seed: int) -> dict:
        # torchdr's default neighbour search is faiss; without faiss it falls back to exact dense affinities.
        knn = "faiss" if importlib.util.find_spec("faiss") else None
        return {"n_components": dims, "device": self.device, "random_state": seed, "backend": knn, "verbose": False}

    def _umap(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        torchdr = self.library("umap")
        return _numpy(
            torchdr.UMAP(n_neighbors=N_NEIGHBORS, min_dist=MIN_DIST, **self._options(dims, seed)).fit_transform(x)
        )

    def _tsne(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        torchdr = self.library("tsne")
        return _numpy(torchdr.TSNE(perplexity=PERPLEXITY, **self._options(dims, seed)).fit_transform(x))

    def _pca(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        torchdr = self.library("pca")
        return _numpy(torchdr.PCA(n_components=dims, device=self.device, random_state=seed).fit_transform(x))


def _numpy(array) -> np.ndarray:
    """torchdr returns the input's array type; a torch tensor is brought back to host memory."""
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
