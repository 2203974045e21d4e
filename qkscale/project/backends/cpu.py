"""CPU backend: umap-learn for UMAP, openTSNE for t-SNE, scikit-learn for PCA."""

from __future__ import annotations

import os
import warnings

import numpy as np

from qkscale.project.base import MIN_DIST, N_NEIGHBORS, PERPLEXITY, Backend


class CPUBackend(Backend):
    """Seeded and reproducible: the same input and seed give the same coordinates."""

    name = "cpu"
    libraries = {
        "umap": ("umap", "umap-learn"),
        "tsne": ("openTSNE", "openTSNE"),
        "pca": ("sklearn.decomposition", "scikit-learn"),
    }

    def describe(self, method: str, dims: int) -> str:
        label = super().describe(method, dims)
        return f"{label} (Barnes-Hut: its FFT method is 2D only)" if method == "tsne" and dims > 2 else label

    def _umap(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        umap = self.library("umap")
        # n_jobs=1: umap-learn is only reproducible single-threaded. Below 4,096 points umap-learn
        # would compute all pairwise distances through a Python callback (28 s for 3,000 points);
        # its nearest-neighbour descent, forced here, takes 1 s.
        model = umap.UMAP(
            n_neighbors=N_NEIGHBORS,
            n_components=dims,
            min_dist=MIN_DIST,
            random_state=seed,
            n_jobs=1,
            force_approximation_algorithm=True,
        )
        with warnings.catch_warnings():
            # Where the neighbour graph has near-disconnected parts, umap-learn falls back from its
            # spectral start to a random one (as documented) and warns; the fit is still complete.
            warnings.filterwarnings("ignore", message="Spectral initialisation failed", category=UserWarning)
            return model.fit_transform(x)

    def _tsne(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        open_tsne = self.library("tsne")
        # openTSNE's FFT gradients are 1D/2D only; 3D runs its (slower) Barnes-Hut method instead.
        model = open_tsne.TSNE(
            n_components=dims,
            perplexity=PERPLEXITY,
            negative_gradient_method="bh" if dims > 2 else "fft",
            random_state=seed,
            n_jobs=os.cpu_count() or 1,
        )
        return np.asarray(model.fit(x))

    def _pca(self, x: np.ndarray, dims: int, seed: int) -> np.ndarray:
        return self.library("pca").PCA(n_components=dims, random_state=seed).fit_transform(x)
