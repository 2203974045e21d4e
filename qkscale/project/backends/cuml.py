"""cuML backend (RAPIDS): UMAP, t-SNE (2D only) and PCA on an NVIDIA GPU."""

from __future__ import annotations

import numpy as np

from qkscale.project.base import MIN_DIST, N_NEIGHBORS, PERPLEXITY, Backend


class CumlBackend(Backend):
    name = "cuml"
    libraries = {method: ("cuml", "cuml-cu12") for method in ("umap", "tsne", "pca")}
    unsupported = {("tsne", 3): "cuML's TSNE computes 2D embeddings only; use --backend torchdr or cpu for 3D t-SNE"}

    @property
    def device(self) -> str:
        return "cuda"

    def _umap(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        cuml = self.library("umap")
        model = cuml.UMAP(n_neighbors=N_NEIGHBORS, n_components=dims, min_dist=MIN_DIST, random_state=seed)
        return _host(model.fit_transform(x))

    def _tsne(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        cuml = self.library("tsne")
        return _host(cuml.TSNE(n_components=dims, perplexity=PERPLEXITY, random_state=seed).fit_transform(x))

    def _pca(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        cuml = self.library("pca")
        return _host(cuml.PCA(n_components=dims).fit_transform(x))


def _host(array) -> np.ndarray:
    """cuML answers in the input's type (numpy here); a device array is copied back."""
    return array.get() if hasattr(array, "get") else np.asarray(array)
