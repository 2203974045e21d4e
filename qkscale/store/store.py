"""Read a store: manifest, token table, one head's queries and keys, recomputed attention."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qkscale.attention import attention_weights
from qkscale.errors import StoreError
from qkscale.selection import format_selection
from qkscale.store import dtypes, layout, metrics_files, projections
from qkscale.store.files import reading, remove_temps, write_json_atomic, write_parquet_atomic
from qkscale.store.kinds import VocabularyClasses
from qkscale.store.manifest import check_manifest, missing_shards
from qkscale.store.shards import Piece, ShardIndex, build_index, read_shard_columns, read_vectors, read_vectors_at

_THUMBNAIL = "thumbnail"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of the store at ``path``, or None if ``path`` holds no qkscale store."""
    try:
        manifest = json.loads((path / layout.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == layout.FORMAT else None


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, checked (:func:`check_manifest`); a one-line StoreError if bad."""
    file = path / layout.MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path} is not a qkscale store (no {layout.MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{file} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != layout.FORMAT:
        raise StoreError(f"{path} is not a qkscale store ({layout.MANIFEST} is not a qkscale manifest)")
    check_manifest(path, manifest)
    return manifest


class Store:
    """A qkscale store on disk. Token ids are row numbers of :attr:`tokens`, everywhere."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = load_manifest(self.path)

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
    def heads(self) -> list[int]:
        """The (query) heads whose vectors this store holds, the same in every stored layer."""
        return list(self.manifest.get("heads", range(self.n_heads)))

    @property
    def vector_dtype(self) -> str:
        """How the vectors are stored: float16 (also for stores older than the option), bfloat16 or float32."""
        return self.manifest.get("store_dtype", dtypes.DEFAULT)

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
        path = layout.shard_dir(self.path, shard) / layout.SHARD_INFO
        with reading(path):
            return json.loads(path.read_text())

    @property
    def complete(self) -> bool:
        """True when every planned shard is committed."""
        return len(self.committed_shards()) == self.manifest["n_shards"]

    @functools.cached_property
    def shard_index(self) -> ShardIndex:
        """Where each committed shard's rows are: O(shards) to build, checked against the files' footers."""
        return build_index(self.path, self.committed_shards())

    def _pieces(self, rows: slice) -> list[Piece]:
        self._all_shards()  # an empty store is an error, not zero rows
        return list(self.shard_index.pieces(rows))

    # -- tokens and documents -----------------------------------------------------------------
    @functools.lru_cache(maxsize=16)  # noqa: B019 (a store lives as long as its readers)
    def _shard_table(self, name: str, shard: int, columns: tuple[str, ...] | None) -> pa.Table:
        return read_shard_columns(self.path, shard, name, columns)

    def token_columns(self, columns: Sequence[str] | None = None, rows: slice = slice(None)) -> pa.Table:
        """Token-table ``columns`` (all if None) over ``rows``, read from the shards those rows lie in.

        String columns come back dictionary-encoded. This is the way to read tokens of a large
        store: only the columns and shards asked for are read.
        """
        key = None if columns is None else tuple(columns)
        parts = [
            self._shard_table(layout.TOKENS, p.shard, key).slice(p.local.start, p.local.stop - p.local.start)
            for p in self._pieces(rows)
        ]
        if not parts:
            schema = self._shard_table(layout.TOKENS, int(self.shard_index.shards[0]), key).schema
            return schema.empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    @functools.cached_property
    def token_schema(self) -> pa.Schema:
        """The token table's columns and types (read from one shard's footer)."""
        path = layout.shard_dir(self.path, self._all_shards()[0]) / layout.TOKENS
        with reading(path):
            return pq.read_schema(path)

    def token_column(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """One token-table column over ``rows`` as a numpy array (strings as an object array)."""
        column = self.token_columns([name], rows).column(name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        return column.to_numpy()

    @functools.cached_property
    def vocabulary(self) -> np.ndarray:
        """Every distinct token string of the store, sorted (an object array; written by :func:`finish_store`)."""
        path = self.path / layout.VOCABULARY
        if path.is_file():
            with reading(path):
                return pq.read_table(path).column("token").to_numpy(zero_copy_only=False)
        return derive_vocabulary(self)

    @functools.cached_property
    def vocabulary_classes(self) -> VocabularyClasses:
        """Which vocabulary entries are punctuation and word continuations (for token kinds)."""
        return VocabularyClasses.of(self.vocabulary)

    @functools.cached_property
    def _vocabulary_array(self) -> pa.Array:
        return pa.array(self.vocabulary, pa.string())

    def token_codes(self, rows: slice = slice(None)) -> np.ndarray:
        """``int32`` index into :attr:`vocabulary` of each token's string over ``rows``."""
        vocabulary = self._vocabulary_array
        codes = []
        for chunk in self.token_columns(["token"], rows).column("token").chunks:
            mapping = pc.index_in(chunk.dictionary, value_set=vocabulary).to_numpy(zero_copy_only=False)
            codes.append(mapping.astype(np.int32)[chunk.indices.to_numpy(zero_copy_only=False)])
        return np.concatenate(codes) if codes else np.empty(0, np.int32)

    @property
    def tokens(self) -> pd.DataFrame:
        """The whole token table: doc, position, token, token_id, is_special, doc_length, rel_position.

        A convenience for small stores: it holds every token string in memory. Large stores are
        read with :meth:`token_columns`, :meth:`token_column` and :meth:`doc_rows`.
        """
        tables = []
        for shard in self._all_shards():
            path = layout.shard_dir(self.path, shard) / layout.TOKENS
            with reading(path):
                tables.append(pq.read_table(path))
        return pa.concat_tables(tables).to_pandas()

    @property
    def documents(self) -> pd.DataFrame:
        """One row per document: doc, text, n_tokens, truncated (indexed by doc); a convenience for small stores."""
        tables = []
        for shard in self._all_shards():
            path = layout.shard_dir(self.path, shard) / layout.DOCS
            with reading(path):
                table = pq.read_table(path)
            tables.append(table.drop_columns([c for c in (_THUMBNAIL,) if c in table.column_names]))
        return pa.concat_tables(tables).to_pandas().set_index("doc", drop=False)

    def _all_shards(self) -> list[int]:
        shards = self.shard_index.shards.tolist()
        if not shards:
            raise StoreError(f"store {self.path} holds no extracted shards yet")
        return shards

    def document(self, doc: int) -> dict[str, Any]:
        """Document ``doc``'s row (doc, text, n_tokens, truncated, ...), read from its shard alone."""
        position = self.shard_index.position_of_doc(doc)
        if position is not None:
            shard = int(self.shard_index.shards[position])
            path = layout.shard_dir(self.path, shard) / layout.DOCS
            with reading(path):
                names = pq.read_schema(path).names
            table = self._shard_table(layout.DOCS, shard, tuple(c for c in names if c != _THUMBNAIL))
            where = np.flatnonzero(table.column("doc").to_numpy() == doc)
            if len(where):
                return table.slice(int(where[0]), 1).to_pylist()[0]
        raise StoreError(f"document {doc} is not in store {self.path}")

    @property
    def n_tokens(self) -> int:
        return self.shard_index.n_tokens

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
        position = self.shard_index.position_of_doc(doc)
        if position is not None:
            path = layout.shard_dir(self.path, int(self.shard_index.shards[position])) / layout.DOCS
            with reading(path):
                table = pq.read_table(path, columns=["doc", _THUMBNAIL], filters=[("doc", "=", doc)])
            if table.num_rows:
                return table.column(_THUMBNAIL)[0].as_py()
        raise StoreError(f"document {doc} is not in store {self.path}")

    def doc_rows(self, doc: int) -> slice:
        """Row range of document ``doc`` (its tokens are contiguous), found in its shard alone."""
        index = self.shard_index
        position = index.position_of_doc(doc)
        if position is not None:
            shard = int(index.shards[position])
            table = self._shard_table(layout.TOKENS, shard, ("doc", "position", "doc_length"))
            first = (table.column("doc").to_numpy() == doc) & (table.column("position").to_numpy() == 0)
            where = np.flatnonzero(first)
            if len(where):
                start = int(index.starts[position]) + int(where[0])
                return slice(start, start + int(table.column("doc_length")[int(where[0])].as_py()))
        raise StoreError(f"document {doc} is not in store {self.path}")

    def doc_of(self, row: int) -> int:
        """The document of token row ``row``."""
        index = self.shard_index
        try:
            position = index.position_of_row(row)
        except IndexError:
            raise StoreError(f"token {row} is not in store {self.path} ({self.n_tokens} tokens)") from None
        table = self._shard_table(layout.TOKENS, int(index.shards[position]), ("doc",))
        return int(table.column("doc")[row - int(index.starts[position])].as_py())

    def shard_rows(self, shard: int) -> slice:
        """Row range of committed shard ``shard``."""
        index = self.shard_index
        where = np.flatnonzero(index.shards == shard)
        if not len(where):
            raise StoreError(f"shard {shard} is not committed in store {self.path}")
        return slice(int(index.starts[where[0]]), int(index.starts[where[0] + 1]))

    # -- vectors -----------------------------------------------------------------------------
    def _check_head(self, layer: int, head: int) -> None:
        if layer not in self.layers:
            raise StoreError(f"layer {layer} is not stored (stored layers: {format_selection(self.layers)})")
        if not 0 <= head < self.n_heads:
            raise StoreError(f"head {head} is out of range (this model has {self.n_heads} heads)")
        if head not in self.heads:
            raise StoreError(f"head {head} is not stored (stored heads: {format_selection(self.heads)})")

    def _vectors(self, kind: str, layer: int, head: int, rows: slice | np.ndarray) -> np.ndarray:
        """``[n, head_dim]`` vectors of one head, reading only that head's column."""
        self._check_head(layer, head)
        stored_head = self.kv_head(head) if kind == "k" else head
        self._all_shards()  # an empty store is an error, not zero vectors
        column = layout.vector_column(kind, layer, stored_head)
        if isinstance(rows, slice):
            return read_vectors(self.path, self.shard_index, column, rows, self.head_dim, self.vector_dtype)
        return read_vectors_at(self.path, self.shard_index, column, rows, self.head_dim, self.vector_dtype)

    def queries(self, layer: int, head: int, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``[n, head_dim]`` queries of one head: every token, the rows ``rows``, or increasing row ids.

        float16 for a float16 store, float32 for a bfloat16 or float32 one (:attr:`vector_dtype`).
        """
        return self._vectors("q", layer, head, rows)

    def keys(self, layer: int, head: int, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """``[n, head_dim]`` keys that query head ``head`` attends with (all rows, ``rows``, or row ids).

        Typed as :meth:`queries`.
        """
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
        return projections.read_projection(self._projection_path(layer, head, method, dims))

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
    if existing is not None and existing.get("complete") is True and missing_shards(path, existing):
        write_json_atomic(path / layout.MANIFEST, {**existing, "complete": False})  # a resume redoes them
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
    write_parquet_atomic(path / layout.VOCABULARY, pa.table({"token": pa.array(derive_vocabulary(store), pa.string())}))
    manifest = dict(store.manifest)
    manifest.update(
        complete=True,
        n_tokens=sum(i["n_tokens"] for i in infos),
        truncated_docs=sum(i["truncated_docs"] for i in infos),
    )
    write_json_atomic(path / layout.MANIFEST, manifest)
    return Store(path)


def derive_vocabulary(store: Store) -> np.ndarray:
    """Every distinct token string, from one pass over the shards' dictionaries (not their rows)."""
    seen: set[str] = set()
    for shard in store.shard_index.shards.tolist():
        for chunk in read_shard_columns(store.path, shard, layout.TOKENS, ["token"]).column("token").chunks:
            seen.update(chunk.dictionary.to_pylist())
    return np.array(sorted(seen), dtype=object)


def open_store(path: str | Path) -> Store:
    """Open the store at ``path`` for reading."""
    if not Path(path).exists():
        raise StoreError(f"store {path} does not exist")
    return Store(path)
