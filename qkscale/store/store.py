"""Read a store: manifest, token table, one head's queries and keys, recomputed attention."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from qkscale.attention import attention_weights
from qkscale.errors import StoreError
from qkscale.selection import format_selection
from qkscale.store import layout, metrics_files, projections
from qkscale.store.files import remove_temps, write_json_atomic

_THUMBNAIL = "thumbnail"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the store at ``path``, or None if ``path`` holds no qkscale store."""
    try:
        manifest = json.loads((path / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == layout.FORMAT else None


class Store:
    """A qkscale store on disk. Token ids are row numbers of :attr:`tokens`, everywhere."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise StoreError(f"{path} is not a qkscale store (no valid {layout.MANIFEST})")
        self.manifest: dict[str, Any] = manifest

    def __reduce__(self) -> tuple:
        return Store, (str(self.path),)  # a store travels as its path: what was read stays behind

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {self.n_tokens} tokens, {len(self.layers)}x{self.n_heads} heads)"

    # -- shape -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Layers of the model (see :attr:`layers` for those stored)."""
        return self.manifest["model"]["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.manifest["model"]["n_heads"]

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (fewer than :attr:`n_heads` under grouped-query attention)."""
        return self.manifest["model"].get("n_kv_heads", self.n_heads)

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` attends with."""
        return head // (self.n_heads // self.n_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.manifest["model"]["head_dim"]

    @property
    def layers(self) -> list[int]:
        """The layers whose vectors this store holds."""
        return list(self.manifest["layers"])

    @property
    def causal(self) -> bool:
        return bool(self.manifest["model"]["causal"])

    # -- shards ------------------------------------------------------------------------------
    def committed_shards(self) -> list[int]:
        """Shards whose folder has been committed, in order."""
        return [s for s in range(self.manifest["n_shards"]) if self.is_committed(s)]

    def is_committed(self, shard: int) -> bool:
        return (layout.shard_dir(self.path, shard) / layout.SHARD_INFO).is_file()

    def shard_info(self, shard: int) -> dict[str, int]:
        return json.loads((layout.shard_dir(self.path, shard) / layout.SHARD_INFO).read_text())

    @property
    def complete(self) -> bool:
        """True when every planned shard is committed."""
        return len(self.committed_shards()) == self.manifest["n_shards"]

    @functools.cached_property
    def _shards(self) -> list[int]:
        return self.committed_shards()

    def _shard_files(self, name: str) -> list[Path]:
        """File ``name`` of every committed shard, in order."""
        if not self._shards:
            raise StoreError(f"store {self.path} holds no extracted shards yet")
        return [layout.shard_dir(self.path, s) / name for s in self._shards]

    @functools.cached_property
    def _vector_table(self) -> pa.Table:
        """All committed shards' vectors as one memory-mapped table (no data is read here)."""
        files = self._shard_files(layout.VECTORS)
        return pa.concat_tables([ipc.open_file(pa.memory_map(str(f))).read_all() for f in files])

    # -- tables ------------------------------------------------------------------------------
    def _table(self, name: str) -> pd.DataFrame:
        tables = [pq.read_table(f) for f in self._shard_files(name)]
        if name == layout.DOCS:  # thumbnails are read one at a time, by :meth:`thumbnail`
            tables = [t.drop_columns([c for c in (_THUMBNAIL,) if c in t.column_names]) for t in tables]
        return pa.concat_tables(tables).to_pandas()

    @functools.cached_property
    def tokens(self) -> pd.DataFrame:
        """One row per token: doc, position, token, token_id, is_special, doc_length, rel_position."""
        return self._table(layout.TOKENS)

    @functools.cached_property
    def documents(self) -> pd.DataFrame:
        """One row per document: doc, text, n_tokens, truncated (indexed by doc)."""
        return self._table(layout.DOCS).set_index("doc", drop=False)

    @property
    def n_tokens(self) -> int:
        return self._vector_table.num_rows

    @property
    def modality(self) -> str:
        """``text``, or ``image`` for a vision model's store (tokens have image, patch_row, patch_col)."""
        return self.manifest.get("modality", "text")

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How documents became model inputs: tokenizer and max_length, or image size, patch grid, prefix tokens."""
        return dict(self.manifest.get("preprocessing", {}))

    def thumbnail(self, doc: int) -> bytes:
        """JPEG bytes of image ``doc`` as the model saw it (the patch grid lies exactly over it)."""
        if self.modality != "image":
            raise StoreError(f"store {self.path} holds text, not images: it has no thumbnails")
        shard = next((s for s in reversed(self._shards) if self.shard_info(s)["first_doc"] <= doc), None)
        if shard is not None:
            path = layout.shard_dir(self.path, shard) / layout.DOCS
            table = pq.read_table(path, columns=["doc", _THUMBNAIL], filters=[("doc", "=", doc)])
            if table.num_rows:
                return table.column(_THUMBNAIL)[0].as_py()
        raise StoreError(f"document {doc} is not in store {self.path}")

    @functools.cached_property
    def _doc_start(self) -> pd.Series:
        starts = np.flatnonzero(self.tokens["position"].to_numpy() == 0)
        return pd.Series(starts, index=self.tokens["doc"].to_numpy()[starts])

    def doc_rows(self, doc: int) -> slice:
        """Row range of document ``doc`` in :attr:`tokens` (its tokens are contiguous)."""
        if doc not in self._doc_start.index:
            raise StoreError(f"document {doc} is not in store {self.path}")
        start = int(self._doc_start[doc])
        return slice(start, start + int(self.tokens["doc_length"].iat[start]))

    def shard_rows(self, shard: int) -> slice:
        """Row range of committed shard ``shard`` in :attr:`tokens`."""
        if shard not in self._shard_starts:
            raise StoreError(f"shard {shard} is not committed in store {self.path}")
        start = self._shard_starts[shard]
        return slice(start, start + self.shard_info(shard)["n_tokens"])

    @functools.cached_property
    def _shard_starts(self) -> dict[int, int]:
        counts = [self.shard_info(s)["n_tokens"] for s in self._shards]
        return dict(zip(self._shards, np.cumsum([0, *counts[:-1]]).tolist(), strict=True))

    # -- vectors -----------------------------------------------------------------------------
    def _check_head(self, layer: int, head: int) -> None:
        if layer not in self.layers:
            raise StoreError(f"layer {layer} is not stored (stored layers: {format_selection(self.layers)})")
        if not 0 <= head < self.n_heads:
            raise StoreError(f"head {head} is out of range (this model has {self.n_heads} heads)")

    def _vectors(self, kind: str, layer: int, head: int, rows: slice) -> np.ndarray:
        """``[n, head_dim]`` float16 vectors of one head, reading only that head's column."""
        self._check_head(layer, head)
        start, stop, _ = rows.indices(self.n_tokens)
        stored_head = self.kv_head(head) if kind == "k" else head
        column = self._vector_table.column(layout.vector_column(kind, layer, stored_head)).slice(start, stop - start)
        parts = [chunk.flatten().to_numpy(zero_copy_only=True) for chunk in column.chunks]
        return np.concatenate(parts or [np.empty(0, np.float16)]).reshape(-1, self.head_dim)

    def queries(self, layer: int, head: int, rows: slice = slice(None)) -> np.ndarray:
        """``[n, head_dim]`` float16 queries of one head: every token, or the token rows ``rows``."""
        return self._vectors("q", layer, head, rows)

    def keys(self, layer: int, head: int, rows: slice = slice(None)) -> np.ndarray:
        """``[n, head_dim]`` float16 keys that query head ``head`` attends with (all rows, or ``rows``)."""
        return self._vectors("k", layer, head, rows)

    def attention(self, doc: int, layer: int, head: int) -> np.ndarray:
        """``[T, T]`` attention of one document, recomputed from the stored Q/K with the model's mask."""
        rows = self.doc_rows(doc)
        q, k = self.queries(layer, head, rows), self.keys(layer, head, rows)
        return attention_weights(q, k, self.score_scale(layer), self.causal, self.attention_window(layer))

    def attention_window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (a query sees its last ``window`` keys), or None."""
        windows = self.manifest.get("attention_window")
        return windows[layer] if windows else None

    def score_scale(self, layer: int) -> float:
        """The factor the model multiplies ``q·k`` by in ``layer`` (usually ``1/sqrt(head_dim)``)."""
        return float(self.manifest["score_scale"][layer])

    # -- metrics -------------------------------------------------------------------------------
    @property
    def has_metrics(self) -> bool:
        return (self.path / metrics_files.METRICS / metrics_files.HEADS).is_file()

    def _metrics_file(self, name: str) -> pd.DataFrame:
        if not self.has_metrics:
            raise StoreError(f"store {self.path} has no head metrics yet; run `qkscale metrics {self.path}`")
        return metrics_files.read_metrics(self.path, name)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per (layer, head): entropy, attended distance, sink and neighbour masses, norms, order."""
        return self._metrics_file(metrics_files.HEADS)

    @property
    def head_similarity(self) -> pd.DataFrame:
        """Head x head similarity of attention patterns, labelled ``L{layer}H{head}``."""
        return self._metrics_file(metrics_files.SIMILARITY)

    @property
    def offset_profiles(self) -> pd.DataFrame:
        """Mean attention mass by relative offset (key position - query position), one row per head."""
        return self._metrics_file(metrics_files.OFFSETS)

    # -- projections ---------------------------------------------------------------------------
    def projection(self, layer: int, head: int, method: str = "umap", dims: int = 2) -> pd.DataFrame:
        """One head's joint projection: ``token`` (row id), ``kind`` ('q'|'k'), ``x``, ``y`` (``z``)."""
        path = self._projection_path(layer, head, method, dims)
        return projections.read_projection(path)

    def projection_record(self, layer: int, head: int, method: str = "umap", dims: int = 2) -> dict[str, Any]:
        """How a projection was made: settings, backend, library, trustworthiness, seconds."""
        return projections.read_record(self._projection_path(layer, head, method, dims))

    def projections(self) -> dict[str, list[tuple[int, int]]]:
        """Which heads have which projections: ``{'umap-2d': [(layer, head), ...]}``."""
        return projections.list_projections(self.path)

    def _projection_path(self, layer: int, head: int, method: str, dims: int) -> Path:
        self._check_head(layer, head)
        path = projections.projection_path(self.path, method, dims, layer, head)
        if not path.is_file():
            raise StoreError(
                f"layer {layer} head {head} has no {method} {dims}D projection; run "
                f"`qkscale project {self.path} --method {method} --dims {dims} --layers {layer} --heads {head}`"
            )
        return path

    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def create_store(path: Path, fields: dict[str, Any]) -> Store:
    """Create the store at ``path`` with a manifest of ``fields`` (kept if the store exists: a resume).

    Temps that interrupted writers left are removed. The store is incomplete until
    :func:`finish_store`.
    """
    existing = read_manifest(path)
    path.mkdir(parents=True, exist_ok=True)
    remove_temps(path)
    if existing is None:
        manifest = {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, **fields, "complete": False}
        write_json_atomic(path / layout.MANIFEST, manifest)
    (path / layout.SHARDS).mkdir(exist_ok=True)
    remove_temps(path / layout.SHARDS)
    return Store(path)


def finish_store(path: Path) -> Store:
    """Mark the store complete once every planned shard is committed, with its totals; returns it."""
    store = Store(path)
    committed = set(store.committed_shards())
    missing = [s for s in range(store.manifest["n_shards"]) if s not in committed]
    if missing:
        raise StoreError(f"store {path} still lacks {len(missing)} shard(s), first {missing[0]}")
    infos = [store.shard_info(s) for s in sorted(committed)]
    manifest = dict(store.manifest)
    manifest.update(
        complete=True,
        n_tokens=sum(i["n_tokens"] for i in infos),
        truncated_docs=sum(i["truncated_docs"] for i in infos),
    )
    write_json_atomic(path / layout.MANIFEST, manifest)
    return Store(path)


def open_store(path: str | Path) -> Store:
    """Open the store at ``path`` for reading."""
    if not Path(path).exists():
        raise StoreError(f"store {path} does not exist")
    return Store(path)
