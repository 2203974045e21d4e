"""Placing the points left out of a fitted sample, in bounded-memory chunks.

PCA is linear, so its map is recovered exactly from the sample. UMAP and t-SNE have no such map:
a point is put at the distance-weighted mean of its nearest sample points' coordinates, which is
how umap-learn and openTSNE initialise their own ``transform`` (without their costly refinement).
Neighbours are searched exactly with torch where that is cheap (small inputs, or on a GPU), and
with pynndescent's approximate index on CPU for large ones. That index searches one thread per
call (its parallel search is not reproducible), so chunks are searched in forked processes, one
per core, each chunk by one call as in a single process: the coordinates are the same.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

N_PLACEMENT_NEIGHBORS = 10
# Query x sample pairs that exact search on CPU is allowed before the approximate index takes over.
EXACT_SEARCH_LIMIT = 2 * 10**9
CHUNK_POINTS = 65_536
# Distances computed at once by exact search (floats), which bounds its memory.
_EXACT_BLOCK = 2**25


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def linear_map(sample: np.ndarray, sample_embedding: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The affine map that takes ``sample`` to ``sample_embedding`` (exact for PCA)."""
    mean = sample.mean(axis=0, dtype=np.float64)
    target_mean = sample_embedding.mean(axis=0, dtype=np.float64)
    weights, *_ = np.linalg.lstsq(sample - mean, sample_embedding - target_mean, rcond=None)
    return lambda points: ((points - mean) @ weights + target_mean).astype(np.float32)


class NeighborSearch:
    """k nearest sample points of query points, exact (torch) or approximate (pynndescent)."""

    def __init__(self, sample: np.ndarray, n_queries: int, device: str = "cpu", seed: int = 0):
        self.sample = sample
        device = device if device == "cpu" or _torch_cuda() else "cpu"  # e.g. cuML beside a CPU-only torch
        approximate = device == "cpu" and n_queries * len(sample) > EXACT_SEARCH_LIMIT
        self._index = _pynndescent_index(sample, seed) if approximate and _has_pynndescent() else None
        if self._index is None:
            import torch

            self._torch = torch
            self._reference = torch.as_tensor(sample, device=device)
            self._reference_sq = (self._reference * self._reference).sum(dim=1)

    @property
    def exact(self) -> bool:
        return self._index is None

    def query(self, points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, distances)`` of the ``k`` nearest sample points, each ``[n, k]``."""
        if self._index is not None:
            indices, distances = self._index.query(points, k=k)
            return indices, distances
        torch = self._torch
        rows = max(1, _EXACT_BLOCK // len(self.sample))
        indices, distances = [], []
        for block in chunks(len(points), rows):
            p = torch.as_tensor(points[block], device=self._reference.device)
            squared = torch.addmm(self._reference_sq[None, :], p, self._reference.T, alpha=-2.0)
            squared += (p * p).sum(dim=1, keepdim=True)
            nearest, index = torch.topk(squared, k, dim=1, largest=False)
            indices.append(index.cpu().numpy())
            distances.append(nearest.clamp_(min=0).sqrt_().cpu().numpy())
        return np.concatenate(indices), np.concatenate(distances)


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_pynndescent() -> bool:
    return importlib.util.find_spec("pynndescent") is not None


def _pynndescent_index(sample: np.ndarray, seed: int):
    from pynndescent import NNDescent

    # One thread: pynndescent's graph, like umap-learn's, is only reproducible single-threaded.
    index = NNDescent(sample, n_neighbors=30, random_state=seed, n_jobs=1)
    index.prepare()
    return index


def place_by_neighbors(
    search: NeighborSearch, sample_embedding: np.ndarray, points: np.ndarray, k: int = N_PLACEMENT_NEIGHBORS
) -> np.ndarray:
    """Coordinates of ``points``: the inverse-distance-weighted mean of their neighbours' coordinates."""
    indices, distances = search.query(points, min(k, len(sample_embedding)))
    weights = 1.0 / (distances.astype(np.float64) + 1e-12)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, sample_embedding[indices]).astype(np.float32)


Meta = TypeVar("Meta")
_PLACER: Callable[[np.ndarray], np.ndarray] | None = None  # what a forked placement process runs


def _place_in_child(points: np.ndarray) -> np.ndarray:
    return _PLACER(points)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _can_fork() -> bool:
    """Forking is possible and worth it: several cores, Linux-like fork, not inside a daemon (a Dask worker)."""
    return (
        _cores() > 1
        and "fork" in multiprocessing.get_all_start_methods()
        and not multiprocessing.current_process().daemon
    )


@contextmanager
def placement_map(
    place: Callable[[np.ndarray], np.ndarray], parallel: bool
) -> Iterator[Callable[[Iterable[tuple[Meta, np.ndarray | None]]], Iterator[tuple[Meta, np.ndarray | None]]]]:
    """``map(items)``: ``(meta, place(points))`` for each ``(meta, points)`` in order (None stays None).

    With ``parallel`` (and a machine where it pays), chunks are placed in forked processes, one
    per core, while this process reads the next chunks and writes the finished ones; at most two
    chunks per process are in flight, so memory stays set by the chunk size.
    """
    global _PLACER
    if not (parallel and _can_fork()):
        yield lambda items: ((meta, None if points is None else place(points)) for meta, points in items)
        return
    cores = _cores()
    _PLACER = place
    pool = ProcessPoolExecutor(max_workers=cores, mp_context=multiprocessing.get_context("fork"))

    def ordered(items: Iterable[tuple[Meta, np.ndarray | None]]) -> Iterator[tuple[Meta, np.ndarray | None]]:
        waiting: deque[tuple[Meta, Any]] = deque()
        for meta, points in items:
            waiting.append((meta, None if points is None else pool.submit(_place_in_child, points)))
            while len(waiting) > 2 * cores:
                yield _finished(waiting.popleft())
        while waiting:
            yield _finished(waiting.popleft())

    try:
        yield ordered
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _PLACER = None


def _finished(item: tuple[Meta, Any]) -> tuple[Meta, np.ndarray | None]:
    meta, future = item
    return meta, None if future is None else future.result()
