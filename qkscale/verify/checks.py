"""Check every file of a store: one :class:`Problem` per thing that is damaged, missing or inconsistent.

Shards are read whole, one at a time, and their vectors one record batch at a time, so memory is
set by a shard's size, not the store's. Nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from qkscale.errors import QKScaleError
from qkscale.jobs.record import load_job
from qkscale.maps.build import map_path
from qkscale.maps.thumbnail import thumbnail_path
from qkscale.store import dtypes, layout, metrics_files
from qkscale.store.checks import first_non_finite
from qkscale.store.files import DAMAGE
from qkscale.store.manifest import manifest_problems
from qkscale.store.projections import AXES, list_projections, projection_path, read_record

# The parts of a store a problem spoils (TOTALS: the manifest's totals disagree with the shards).
SHARD, PROJECTION, VIEWS, METRICS, VOCABULARY, MANIFEST, TOTALS, JOB = (
    "shard",
    "projection",
    "views",
    "metrics",
    "vocabulary",
    "manifest",
    "totals",
    "job",
)
_NOT_PER_POINT = ("cells.npy",)  # a map's files that are not one row per point
METRICS_FILES = (metrics_files.HEADS, metrics_files.SIMILARITY, metrics_files.OFFSETS)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: the file (relative to the store), what is wrong, and which part it spoils."""

    file: str
    what: str
    part: str  # shard | projection | views | metrics | vocabulary | manifest | totals | job
    unit: Any = None  # the shard number, or (method, dims, layer, head)

    def line(self) -> str:
        return f"{self.file}: {self.what}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unit": list(self.unit) if isinstance(self.unit, tuple) else self.unit}


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_raw_manifest(root: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The parsed manifest (None if it cannot be read) and its problems."""
    try:
        manifest = json.loads((root / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, [f"cannot be read ({_reason(exc)})"]
    problems = manifest_problems(manifest)
    return (manifest if not problems else None), problems


def vector_columns(manifest: dict[str, Any]) -> list[str]:
    """The columns every shard's ``vectors.arrow`` must have."""
    model = manifest["model"]
    heads = layout.stored_heads(model["n_heads"], model.get("n_kv_heads"), manifest.get("heads"))
    return [layout.vector_column(kind, layer, h) for kind in "qk" for layer in manifest["layers"] for h in heads[kind]]


def check_shard(root: Path, manifest: dict[str, Any], shard: int) -> list[Problem]:
    """Files present and readable, Arrow footer, row counts agreeing, documents in order, vectors finite."""
    folder = layout.shard_dir(root, shard)
    name = str(folder.relative_to(root))

    def problem(what: str, file: str = "") -> Problem:
        return Problem(f"{name}/{file}" if file else name, what, SHARD, shard)

    if not folder.is_dir():
        return [problem("is missing, but the manifest says the store is complete")] if manifest["complete"] else []
    if not (folder / layout.SHARD_INFO).is_file():
        return [problem(f"has no {layout.SHARD_INFO}: it was never committed")]
    try:
        info = json.loads((folder / layout.SHARD_INFO).read_text(encoding="utf-8"))
        n_docs, n_tokens, first_doc = (int(info[key]) for key in ("n_docs", "n_tokens", "first_doc"))
    except (*DAMAGE, TypeError) as exc:
        return [problem(f"cannot be read ({_reason(exc)})", layout.SHARD_INFO)]
    problems: list[Problem] = []
    try:
        tokens = pq.read_table(folder / layout.TOKENS)
        missing = [c for c in layout.TOKEN_SCHEMA.names if c not in tokens.column_names]
        if missing:
            problems.append(problem(f"has no column {missing[0]!r}", layout.TOKENS))
        elif tokens.num_rows != n_tokens:
            problems.append(problem(f"has {tokens.num_rows} rows, {layout.SHARD_INFO} says {n_tokens}", layout.TOKENS))
    except DAMAGE as exc:
        problems.append(problem(f"cannot be read ({_reason(exc)})", layout.TOKENS))
    try:
        docs = pq.read_table(folder / layout.DOCS, columns=["doc"]).column("doc").to_numpy()
        if not np.array_equal(docs, np.arange(first_doc, first_doc + n_docs)):
            problems.append(problem(f"does not hold documents {first_doc}-{first_doc + n_docs - 1}", layout.DOCS))
    except DAMAGE as exc:
        problems.append(problem(f"cannot be read ({_reason(exc)})", layout.DOCS))
    problems.extend(problem(what, layout.VECTORS) for what in _vector_problems(folder, manifest, n_tokens))
    return problems


def _vector_problems(folder: Path, manifest: dict[str, Any], n_tokens: int) -> Iterator[str]:
    head_dim = manifest["model"]["head_dim"]
    dtype = manifest.get("store_dtype", dtypes.DEFAULT)
    expected = dtypes.arrow_type(dtype, head_dim)
    try:
        with pa.memory_map(str(folder / layout.VECTORS)) as source:
            reader = ipc.open_file(source)
            names = reader.schema.names
            absent = [c for c in vector_columns(manifest) if c not in names]
            if absent:
                yield f"has no column {absent[0]!r}"
                return
            for name in names:
                field = reader.schema.field(name)
                if field.type != expected:
                    yield f"column {name!r} is {field.type}, not {expected} ({dtype} vectors of {head_dim} values)"
                    return
            rows = 0
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                for name in names:
                    stored = batch.column(name).flatten().to_numpy(zero_copy_only=False)
                    bad = first_non_finite(dtypes.decode(stored, dtype).reshape(-1, head_dim))
                    if bad is not None:
                        yield f"holds non-finite values in {name} (first at row {rows + bad} of the shard)"
                        return
                rows += batch.num_rows
    except DAMAGE as exc:
        yield f"cannot be read ({_reason(exc)})"
        return
    if rows != n_tokens:
        yield f"has {rows} rows, {layout.SHARD_INFO} says {n_tokens}"


def check_projection(root: Path, key: str, layer: int, head: int, n_tokens: int | None) -> list[Problem]:
    """The projection file (record, row count, finite coordinates), then its thumbnail and 2D map."""
    method, dims_text = key.rsplit("-", 1)
    dims = int(dims_text.rstrip("d"))
    unit = (method, dims, layer, head)
    path = projection_path(root, method, dims, layer, head)
    name = str(path.relative_to(root))
    try:
        file = pq.ParquetFile(path)
        record = read_record(path)
        axes = list(AXES[:dims])
        rows = 0
        for group in range(file.metadata.num_row_groups):
            table = file.read_row_group(group, columns=["token", "kind", *axes])
            for axis in axes:
                if not np.isfinite(table.column(axis).to_numpy()).all():
                    return [Problem(name, f"holds non-finite {axis} coordinates", PROJECTION, unit)]
            rows += table.num_rows
        if not isinstance(record.get("settings"), dict):
            return [Problem(name, "has no record of its settings", PROJECTION, unit)]
    except DAMAGE as exc:
        return [Problem(name, f"cannot be read ({_reason(exc)})", PROJECTION, unit)]
    if n_tokens is not None and rows != 2 * n_tokens:
        return [Problem(name, f"has {rows} points, the store has {2 * n_tokens} (2 per token)", PROJECTION, unit)]
    return _view_problems(root, unit, rows)


def _view_problems(root: Path, unit: tuple[str, int, int, int], rows: int) -> list[Problem]:
    from PIL import Image, UnidentifiedImageError

    problems = []
    thumbnail = thumbnail_path(root, *unit)
    try:
        with Image.open(thumbnail) as image:
            image.verify()
    except (*DAMAGE, UnidentifiedImageError, SyntaxError) as exc:
        problems.append(Problem(str(thumbnail.relative_to(root)), f"cannot be read ({_reason(exc)})", VIEWS, unit))
    if unit[1] == 2:
        folder = map_path(root, *unit)
        try:
            json.loads((folder / "grid.json").read_text(encoding="utf-8"))
            for column in sorted(folder.glob("*.npy")):
                length = len(np.load(column, mmap_mode="r"))
                if column.name not in _NOT_PER_POINT and not column.name.startswith("pyramid-") and length != rows:
                    raise ValueError(f"{column.name} has {length} rows, the projection {rows}")
        except DAMAGE as exc:
            problems.append(Problem(str(folder.relative_to(root)), f"cannot be read ({_reason(exc)})", VIEWS, unit))
    return problems


def check_metrics(root: Path) -> list[Problem]:
    folder = root / metrics_files.METRICS
    if not folder.is_dir():
        return []
    problems = []
    for name in METRICS_FILES:
        try:
            pq.read_table(folder / name)
        except DAMAGE as exc:
            problems.append(Problem(f"{metrics_files.METRICS}/{name}", f"cannot be read ({_reason(exc)})", METRICS))
    return problems


def check_vocabulary(root: Path) -> list[Problem]:
    try:
        pq.read_table(root / layout.VOCABULARY)
    except DAMAGE as exc:
        return [Problem(layout.VOCABULARY, f"cannot be read ({_reason(exc)})", VOCABULARY)]
    return []


def check_job(root: Path) -> list[Problem]:
    try:
        load_job(root)
    except QKScaleError as exc:
        return [Problem(layout.JOB, f"cannot be read ({str(exc).split('unreadable: ', 1)[-1]})", JOB)]
    return []


def verify_store(root: Path, progress: bool = True) -> list[Problem]:
    """Every problem of the store at ``root``, in the order of its files."""
    from tqdm.auto import tqdm

    manifest, bad = read_raw_manifest(root)
    if manifest is None:
        return [Problem(layout.MANIFEST, what, MANIFEST) for what in bad]
    n_shards = manifest["n_shards"]
    projections = list_projections(root)
    total = n_shards + sum(len(heads) for heads in projections.values())
    problems: list[Problem] = []
    counted: list[int] = []
    with tqdm(total=total, desc="verify", unit="file", disable=not progress, dynamic_ncols=True) as bar:
        for shard in range(n_shards):
            found = check_shard(root, manifest, shard)
            problems.extend(found)
            info = layout.shard_dir(root, shard) / layout.SHARD_INFO
            if not found and info.is_file():
                counted.append(json.loads(info.read_text(encoding="utf-8"))["n_tokens"])
            bar.update()
        all_good = not problems and len(counted) == n_shards
        n_tokens = sum(counted) if all_good else None  # unknown while shards are damaged or missing
        if manifest["complete"]:
            problems.extend(check_vocabulary(root))
            if all_good and manifest.get("n_tokens") != n_tokens:
                what = f"says the store has {manifest.get('n_tokens')} tokens, its shards hold {n_tokens}"
                problems.append(Problem(layout.MANIFEST, what, TOTALS))
        for key, heads in projections.items():
            for layer, head in heads:
                problems.extend(check_projection(root, key, layer, head, n_tokens))
                bar.update()
    problems.extend(check_metrics(root))
    problems.extend(check_job(root))
    return problems
