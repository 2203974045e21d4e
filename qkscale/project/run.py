"""The project stage: a joint 2D/3D embedding of every selected head's queries and keys.

:func:`plan_projection` checks the store, the options and the backend before any work;
:func:`project_head` projects one head and commits it atomically (the unit a Dask task runs);
:func:`project` runs a plan with a progress bar over heads, skipping heads already done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qkscale import __version__
from qkscale.engine import QUIET, Progress, Stage, run_stage
from qkscale.errors import OptionError, QKScaleError, StoreError
from qkscale.joint import JointNormalization, normalize_with_info
from qkscale.maps.build import MAPS, views_exist, write_views
from qkscale.maps.thumbnail import THUMBNAILS
from qkscale.options import api_signature, from_keywords
from qkscale.project.base import MIN_POINTS, Backend
from qkscale.project.placement import (
    CHUNK_POINTS,
    NeighborSearch,
    chunks,
    linear_map,
    place_by_neighbors,
    placement_map,
)
from qkscale.project.registry import get_backend
from qkscale.project.sampling import DocOrder, fit_points, subsample_trustworthiness, trust_points
from qkscale.project.source import StoredPoints, store_doc_order, stored_head, unit_rows
from qkscale.selection import format_selection, parse_selection
from qkscale.stage_options import DEFAULT_SAMPLE, DISTANCES, ProjectOptions
from qkscale.store import Store, open_store
from qkscale.store.projections import PROJECTIONS, ProjectionWriter, projection_key, projection_path, read_record

METRICS = DISTANCES


@dataclass(frozen=True)
class ProjectionSettings:
    """What a projection is: the same settings give the same coordinates (on CPU)."""

    method: str = "umap"
    dims: int = 2
    metric: str = "cosine"
    sample: int = DEFAULT_SAMPLE
    seed: int = 0
    translate: bool = True
    scale: bool = True

    def validate(self) -> None:
        """Check what the backend does not (it checks method and dims: :meth:`Backend.check`)."""
        if not 0 <= self.seed < 2**32:
            raise OptionError(f"--seed must be between 0 and 2**32 - 1, not {self.seed}")
        if self.metric not in METRICS:
            raise OptionError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        need = MIN_POINTS.get(self.method, 0)
        if self.sample < need:
            raise OptionError(f"--sample {self.sample} is too small: {self.method} needs at least {need} points")


def _select(store: Store, layers: str | list[int] | None, heads: str | list[int] | None) -> list[tuple[int, int]]:
    stored = store.layers
    layer_list = stored if layers is None else parse_selection(layers, store.n_layers, "layers")
    missing = [layer for layer in layer_list if layer not in stored]
    if missing:
        raise OptionError(f"layer {missing[0]} is not in the store (stored layers: {format_selection(stored)})")
    head_list = store.heads if heads is None else parse_selection(heads, store.n_heads, "heads")
    unstored = [head for head in head_list if head not in store.heads]
    if unstored:
        raise OptionError(f"head {unstored[0]} is not in the store (stored heads: {format_selection(store.heads)})")
    return [(layer, head) for layer in layer_list for head in head_list]


def plan_projection(store: Store | str | Path, *, force: bool = False, **options: Any) -> ProjectStage:
    """Check everything a projection run needs (``options``: the fields of :class:`ProjectOptions`).

    Nothing is computed or written. Heads that already have a projection are left out of the
    stage's units, unless ``force``; one made with other settings is an error.
    """
    backend = options.pop("backend", "auto")  # a name, or a ready Backend instance
    chosen = from_keywords(ProjectOptions, {**options, "backend": backend if isinstance(backend, str) else "auto"})
    store = store if isinstance(store, Store) else open_store(store)
    if not store.complete:
        done, planned = len(store.committed_shards()), store.manifest["n_shards"]
        raise StoreError(f"store {store.path} is incomplete ({done}/{planned} shards): finish `qkscale extract` first")
    if store.n_tokens == 0:
        raise StoreError(f"store {store.path} holds no vectors to project")
    settings = [
        ProjectionSettings(method, dims, chosen.metric, chosen.sample, chosen.seed, chosen.translate, chosen.scale)
        for method in chosen.methods
        for dims in chosen.dims
    ]
    checked = get_backend(backend)
    for each in settings:
        each.validate()
        checked.check(each.method, each.dims)
        if 2 * store.n_tokens < MIN_POINTS[each.method]:
            raise StoreError(
                f"{each.method} needs at least {MIN_POINTS[each.method]} points; "
                f"this store's heads have {2 * store.n_tokens}"
            )
    heads = _select(store, chosen.layers, chosen.heads)
    projected = (
        set() if force else {(s.method, s.dims, *h) for s in settings for h in heads if _has_projection(store, s, *h)}
    )
    done = {unit for unit in projected if views_exist(store.path, *unit)}
    return ProjectStage(store, settings, heads, backend, done, projected - done)


def _has_projection(store: Store, settings: ProjectionSettings, layer: int, head: int) -> bool:
    """True if this head already has this projection; an error if it was made differently."""
    path = projection_path(store.path, settings.method, settings.dims, layer, head)
    if not path.is_file():
        return False
    previous = read_record(path).get("settings", {})
    changed = [name for name, value in asdict(settings).items() if previous.get(name) != value]
    if changed:
        was = ", ".join(f"{name}={previous.get(name)} (now {getattr(settings, name)})" for name in changed)
        raise OptionError(
            f"layer {layer} head {head} already has a {settings.method} {settings.dims}D projection made with "
            f"{was}; pass --force to replace it"
        )
    return True


def joint_points(q: np.ndarray, k: np.ndarray, settings: ProjectionSettings) -> tuple[np.ndarray, JointNormalization]:
    """``[queries; keys]`` jointly normalised in memory (and on the unit sphere for the cosine metric)."""
    q2, k2, normalization = normalize_with_info(q, k, translate=settings.translate, scale=settings.scale)
    points = np.concatenate([q2, k2])
    del q2, k2
    return (unit_rows(points) if settings.metric == "cosine" else points), normalization


def _quiet(stage: str) -> None:
    """The default progress report: none."""


Points = np.ndarray | StoredPoints  # anything indexable by a slice or by increasing ids, with len()
Sink = Callable[[slice, np.ndarray], None]  # receives the coordinates of each chunk of points, in order


def embed_points(
    points: Points,
    docs: np.ndarray | DocOrder,
    settings: ProjectionSettings,
    backend: Backend,
    report: Callable[[str], None] = _quiet,
    sink: Sink | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Coordinates of ``points`` (``[queries; keys]`` of the tokens in ``docs``): fit a sample, place the rest.

    The points are read, placed and handed on in chunks of :data:`CHUNK_POINTS`, so memory is set
    by the chunk and the sample. Without ``sink`` the coordinates are returned as one array; with
    it each chunk goes to ``sink(chunk, coords)`` and None is returned. ``details`` holds the
    record's fields, trustworthiness (on the fixed subsample) included. ``report`` is called with
    a short description of each stage (for a progress bar).
    """
    started = time.perf_counter()
    n_points = len(points)
    fitted = fit_points(docs, settings.sample, np.random.default_rng(settings.seed))
    sample = points[fitted]
    report(f"fitting {len(fitted):,} points")
    sample_embedding = backend.embed(sample, settings.method, settings.dims, settings.seed)
    fit_seconds = time.perf_counter() - started

    n_rest = n_points - len(fitted)
    place, placement, parallel = None, "none (full fit)", False
    if n_rest and settings.method == "pca":
        place, placement = linear_map(sample, sample_embedding), "linear map"
    elif n_rest:
        search = NeighborSearch(sample, n_rest, device=backend.device, seed=settings.seed)
        place = lambda chunk: place_by_neighbors(search, sample_embedding, chunk)  # noqa: E731
        placement = f"{'exact' if search.exact else 'approximate'} nearest-neighbour interpolation"
        parallel = not search.exact  # exact search (torch) and the linear map use every core already
    del sample

    coords = np.empty((n_points, settings.dims), np.float32) if sink is None else None
    trust_ids = trust_points(n_points)
    trust_x, trust_coords = [], []

    def prepared():
        """Each chunk with its fitted rows filled in, and the points still to place (or None)."""
        for chunk in _halves_in_chunks(n_points, CHUNK_POINTS):
            if n_rest:
                report(f"placing {n_rest:,} points: {chunk.start / n_points:.0%}")
            first, last = np.searchsorted(fitted, [chunk.start, chunk.stop])
            out = np.empty((chunk.stop - chunk.start, settings.dims), np.float32)
            in_sample = np.zeros(len(out), bool)
            in_sample[fitted[first:last] - chunk.start] = True
            out[fitted[first:last] - chunk.start] = sample_embedding[first:last]  # a row drawn twice: its last fit
            t_first, t_last = np.searchsorted(trust_ids, [chunk.start, chunk.stop])
            trusted = trust_ids[t_first:t_last] - chunk.start
            x = points[chunk] if not in_sample.all() or len(trusted) else None
            if x is not None:
                trust_x.append(x[trusted])
            yield (chunk, out, in_sample, trusted), (None if in_sample.all() else x[~in_sample])

    with placement_map(place, parallel) as placed_chunks:
        for (chunk, out, in_sample, trusted), placed in placed_chunks(prepared()):
            if placed is not None:
                out[~in_sample] = placed
            if len(trusted):
                trust_coords.append(out[trusted])
            if not np.isfinite(out).all():
                raise QKScaleError(f"{backend.name} returned non-finite coordinates")
            if sink is None:
                coords[chunk] = out
            else:
                sink(chunk, out)
    details = {
        "n_points": n_points,
        "n_fitted": len(fitted),
        "placement": placement,
        "fit_seconds": round(fit_seconds, 3),
        "place_seconds": round(time.perf_counter() - started - fit_seconds, 3),
        "trustworthiness": subsample_trustworthiness(np.concatenate(trust_x), np.concatenate(trust_coords)),
    }
    return coords, details


def _halves_in_chunks(n_points: int, size: int) -> list[slice]:
    """Chunks of ``[0, n_points)`` that never straddle the queries/keys boundary."""
    half = n_points // 2
    return [*chunks(half, size), *(slice(c.start + half, c.stop + half) for c in chunks(n_points - half, size))]


def project_head(
    store: Store,
    layer: int,
    head: int,
    settings: ProjectionSettings,
    backend: Backend,
    report: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """Project one head's queries and keys jointly and commit the result; returns its record.

    Every pass over the head streams it in chunks: the normalisation, the sample (read by row
    ids), and the placement, whose coordinates are written as they come, one row group a chunk.
    """
    started = time.perf_counter()
    report("normalising")
    points = stored_head(store, layer, head, settings.translate, settings.scale, settings.metric == "cosine")
    n_tokens = store.n_tokens
    path = projection_path(store.path, settings.method, settings.dims, layer, head)
    writer = ProjectionWriter(path, settings.dims)

    def write(chunk: slice, coords: np.ndarray) -> None:
        kind = 0 if chunk.start < n_tokens else 1
        tokens = np.arange(chunk.start, chunk.stop) - kind * n_tokens
        writer.write(tokens, np.full(len(tokens), kind, np.int8), coords)

    try:
        _, details = embed_points(points, store_doc_order(store), settings, backend, report, sink=write)
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, QKScaleError):
            raise QKScaleError(f"layer {layer} head {head}: {exc}") from None
        raise
    record = {
        "settings": asdict(settings),
        "layer": layer,
        "head": head,
        "backend": backend.name,
        "library": backend.describe(settings.method, settings.dims),
        "device": backend.device,
        **details,
        "normalization": points.normalization.as_dict(),
        "seconds": round(time.perf_counter() - started, 3),
        "qkscale_version": __version__,
    }
    report("writing its map and thumbnail")
    views = lambda finished: write_views(store, finished, settings.method, settings.dims, layer, head)  # noqa: E731
    writer.commit(record, before_rename=views)
    return record


def complete_views(store: Store, layer: int, head: int, settings: ProjectionSettings) -> dict[str, Any]:
    """Write the map and thumbnail of a head projected before `project` wrote them; returns its record."""
    path = projection_path(store.path, settings.method, settings.dims, layer, head)
    write_views(store, path, settings.method, settings.dims, layer, head)
    return read_record(path)


Unit = tuple[str, int, int, int]  # method, dims, layer, head


class ProjectStage(Stage):
    """One unit per (head, method, dims) not projected yet."""

    name = "project"
    work_unit = "head"
    uses_gpu = True

    def __init__(
        self,
        store: Store,
        settings: list[ProjectionSettings],
        heads: list[tuple[int, int]],
        backend: Backend | str,
        done: set[Unit],
        views_missing: set[Unit] = frozenset(),
    ):
        """``backend``: a name (``auto`` is resolved where the units run) or a ready instance.

        ``views_missing``: heads projected already whose map or thumbnail is missing (written, not reprojected).
        """
        self.store, self.settings, self.heads, self.backend, self.done = store, settings, heads, backend, done
        self.views_missing = set(views_missing)
        self._chosen: Backend | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_chosen": None}

    def _all_units(self) -> list[Unit]:
        return [(s.method, s.dims, layer, head) for s in self.settings for layer, head in self.heads]

    def units(self) -> list[Unit]:
        return [unit for unit in self._all_units() if unit not in self.done]

    def work_total(self) -> tuple[int, int]:
        return len(self._all_units()), len(self.done)

    def temp_folders(self) -> list[Path]:
        return [
            self.store.path / folder / projection_key(s.method, s.dims)
            for s in self.settings
            for folder in (PROJECTIONS, MAPS, THUMBNAILS)
        ]

    def store_path(self) -> Path:
        return self.store.path

    def describe(self, unit: Unit) -> str:
        method, dims, layer, head = unit
        return f"head L{layer}H{head} {projection_key(method, dims)}"

    def setup(self) -> None:
        self._chosen = get_backend(self.backend)

    def run_unit(self, unit: Unit, progress: Progress = QUIET) -> dict[str, Any]:
        method, dims, layer, head = unit
        settings = next(s for s in self.settings if (s.method, s.dims) == (method, dims))
        report = lambda stage: progress.note(f"L{layer} H{head}: {stage}")  # noqa: E731
        if unit in self.views_missing:
            report("writing its map and thumbnail")
            return complete_views(self.store, layer, head, settings)
        return project_head(self.store, layer, head, settings, self._chosen, report)

    def note(self, unit: Unit, record: dict[str, Any]) -> str:
        return f"L{record['layer']} H{record['head']}"

    def finish(self, results: dict[Unit, dict[str, Any]]) -> list[dict[str, Any]]:
        return list(results.values())

    def summary(self, records: list[dict[str, Any]], seconds: float) -> str | None:
        if not records:
            return None
        trust = sorted(r["trustworthiness"] for r in records)
        span = f"{trust[0]:.3f}" if len(trust) == 1 else f"{trust[0]:.3f}-{trust[-1]:.3f}"
        libraries = ", ".join(dict.fromkeys(r["library"] for r in records))
        return (
            f"projected {len(records)} heads with {libraries} on {records[0]['device']}: "
            f"trustworthiness {span}, {sum(r['seconds'] for r in records):.1f} s"
        )


@api_signature(ProjectOptions)
def project(store: Store | str | Path, progress: bool = True, force: bool = False, **options: Any) -> Store:
    """Project the selected heads of ``store`` (``options``: the fields of :class:`ProjectOptions`)."""
    stage = plan_projection(store, force=force, **options)
    run_stage(stage, progress=progress)
    return stage.store
