"""What Dask workers run: one shard's extraction, one shard's metric sums, one head's projection.

Each worker process loads the model once and keeps it for every later shard of the same job
(:func:`_loaded_model`), and keeps the opened store for every head it projects. Tasks write only
through the stages' atomic commits (a shard folder, a projection file), so a retried task or a
task run twice leaves the store as one run would.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from qkscale.extraction import ExtractionPlan, LoadedModel, extract_shard
from qkscale.metrics import HeadSums, shard_sums
from qkscale.project.registry import get_backend
from qkscale.project.run import ProjectionSettings, project_head
from qkscale.store import Store

_LOCK = threading.Lock()
_MODEL: dict[str, Any] = {}  # "key" -> plan identity, "loaded" -> LoadedModel, "lock" -> its lock
_STORES: dict[str, Store] = {}


def _loaded_model(plan: ExtractionPlan) -> tuple[LoadedModel, threading.Lock]:
    """This worker's model for ``plan``: loaded by the first task, reused by the next ones."""
    key = repr((plan.info, plan.layers, plan.device, plan.dtype, plan.max_length))
    with _LOCK:
        if _MODEL.get("key") != key:
            if "loaded" in _MODEL:
                _MODEL["loaded"].capture.remove()
            _MODEL.update(key=key, loaded=LoadedModel.load(plan), lock=threading.Lock())
        return _MODEL["loaded"], _MODEL["lock"]


def extract_shard_task(plan: ExtractionPlan, shard: int, docs: list[tuple[int, Any]]) -> dict[str, int]:
    """Extract and commit one shard; a shard already committed (by an earlier try) is left as it is."""
    store = Store(plan.out)
    if store.is_committed(shard):
        return store.shard_info(shard)
    loaded, lock = _loaded_model(plan)
    with lock:  # one capture per model: the worker's threads take turns on it
        return extract_shard(loaded, plan, shard, docs)


def _store(path: str) -> Store:
    """This worker's open store at ``path`` (reopened when its manifest changes)."""
    from qkscale.store import layout

    key = f"{path}:{(Path(path) / layout.MANIFEST).stat().st_mtime_ns}"
    with _LOCK:
        if key not in _STORES:
            _STORES.clear()
            _STORES[key] = Store(path)
        return _STORES[key]


def shard_sums_task(store_path: str, shard: int) -> HeadSums:
    return shard_sums(Store(store_path), shard)


def project_head_task(
    store_path: str, layer: int, head: int, settings: ProjectionSettings, backend: str
) -> dict[str, Any]:
    """Project one head on this worker (``auto`` picks this worker's best backend)."""
    return project_head(_store(store_path), layer, head, settings, get_backend(backend))
