"""Repair a store from its problems: set the damaged parts aside, then make them again.

Damaged shards are extracted again (with the model, corpus and options the manifest records),
damaged projections projected again (with the settings their record holds, when it can be
read), damaged maps and thumbnails rewritten from their projection, damaged metrics recomputed.
Extraction and projection are deterministic on one device, so the repaired store equals an
undamaged one. Everything set aside is kept under ``STORE/damaged/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkscale.errors import QKScaleError, StoreError
from qkscale.maps.build import map_path
from qkscale.maps.thumbnail import thumbnail_path
from qkscale.selection import format_selection
from qkscale.store import layout, metrics_files
from qkscale.store.damaged import set_aside
from qkscale.store.files import write_json_atomic
from qkscale.store.lock import writer_lock
from qkscale.store.projections import projection_path, read_record
from qkscale.verify.checks import JOB, MANIFEST, METRICS, PROJECTION, SHARD, TOTALS, VIEWS, VOCABULARY, Problem

Unit = tuple[str, int, int, int]


def extraction_options(manifest: dict[str, Any]) -> dict[str, Any]:
    """The keywords of :func:`qkscale.extraction.plan_extraction` that made this store (from its manifest)."""
    model, options = manifest["model"], manifest["options"]
    chosen: dict[str, Any] = {
        "model": model["source"],
        "corpus": manifest["corpus"]["spec"],
        "layers": format_selection(manifest["layers"]),
        "heads": format_selection(manifest["heads"]) if "heads" in manifest else None,
        **{name: options[name] for name in ("max_length", "batch_size", "docs_per_shard", "bucket", "dtype")},
    }
    if options.get("max_tokens") is not None:
        chosen["max_tokens"] = options["max_tokens"]
    else:
        chosen["limit_docs"] = options.get("limit_docs")
    if model.get("q_module"):  # the generic adapter: its overrides are part of the model's identity
        chosen.update({name: model[name] for name in ("q_module", "k_module", "n_heads", "head_dim", "causal")})
    return chosen


def _reextract(root: Path, manifest: dict[str, Any], progress: bool) -> None:
    from qkscale.engine import run_stage
    from qkscale.extraction import ExtractStage, plan_extraction

    try:
        plan = plan_extraction(out=root, **extraction_options(manifest))
    except QKScaleError as exc:  # the corpus moved, the model is gone: say so in one line
        raise StoreError(f"damaged shards cannot be extracted again: {exc}") from None
    run_stage(ExtractStage(plan), progress=progress)


def _settings(path: Path) -> dict[str, Any] | None:
    try:
        record = read_record(path)
    except StoreError:  # a damaged file (read_record names it): its settings are lost with it
        return None
    settings = record.get("settings")
    return {**settings, "backend": record.get("backend", "auto")} if isinstance(settings, dict) else None


def _sibling_settings(path: Path) -> dict[str, Any] | None:
    """The settings of another head's projection in the same folder (`project` makes a folder with one setting)."""
    for sibling in sorted(path.parent.glob("L*-H*.parquet")):
        if sibling != path and (settings := _settings(sibling)) is not None:
            return settings
    return None


def _reproject(root: Path, units: dict[Unit, dict[str, Any] | None], progress: bool, log: Callable[[str], None]):
    from qkscale.engine import run_stage
    from qkscale.project import plan_projection

    for (method, dims, layer, head), settings in sorted(units.items()):
        if settings is None:
            log(
                f"L{layer}H{head} {method}-{dims}d: its settings were lost with its file; project it again with "
                f"`qkscale project {root} --method {method} --dims {dims} --layers {layer} --heads {head}`"
            )
            continue
        options = {name: settings[name] for name in ("sample", "metric", "seed", "translate", "scale")}
        stage = plan_projection(
            root, methods=(method,), dims=(dims,), layers=[layer], heads=[head], backend=settings["backend"], **options
        )
        run_stage(stage, progress=progress)
        log(f"L{layer}H{head} {method}-{dims}d: made again")


def repair_store(root: Path, problems: list[Problem], progress: bool = True, log: Callable[[str], None] = print):
    """Repair every problem that can be repaired; a manifest with bad fields cannot (a one-line StoreError)."""
    fields = [p for p in problems if p.part == MANIFEST]
    if fields:
        raise StoreError(f"{fields[0].line()}: fix this field by hand (verify --repair does not guess it)")
    with writer_lock(root, "qkscale verify --repair"):
        manifest = json.loads((root / layout.MANIFEST).read_text(encoding="utf-8"))
        shards = sorted({p.unit for p in problems if p.part == SHARD})
        for shard in shards:
            folder = layout.shard_dir(root, shard)
            if folder.exists():
                log(f"{folder.relative_to(root)}: set aside as {set_aside(root, folder).relative_to(root)}")
        vocabulary = root / layout.VOCABULARY
        if (shards or any(p.part in (VOCABULARY, TOTALS) for p in problems)) and vocabulary.exists():
            set_aside(root, vocabulary)
        if shards or any(p.part in (VOCABULARY, TOTALS) for p in problems):
            write_json_atomic(root / layout.MANIFEST, {**manifest, "complete": False})
            _reextract(root, manifest, progress)
            log(f"extracted again: {len(shards)} shard(s); the store is complete")
        units: dict[Unit, dict[str, Any] | None] = {}
        for problem in problems:
            if problem.part == PROJECTION:
                path = projection_path(root, *problem.unit)
                units[problem.unit] = _settings(path) or _sibling_settings(path)
                for part in (path, thumbnail_path(root, *problem.unit), map_path(root, *problem.unit)):
                    if part.exists():
                        set_aside(root, part)
            elif problem.part == VIEWS:  # `project` writes the missing views from the projection
                units.setdefault(problem.unit, _settings(projection_path(root, *problem.unit)))
                set_aside(root, root / problem.file)
        _reproject(root, units, progress, log)
        if any(p.part == METRICS for p in problems):
            from qkscale.metrics import compute_metrics

            set_aside(root, root / metrics_files.METRICS)
            compute_metrics(root, progress=progress)
            log("metrics: computed again")
        if any(p.part == JOB for p in problems):
            log(f"{layout.JOB}: set aside as {set_aside(root, root / layout.JOB).relative_to(root)}")
