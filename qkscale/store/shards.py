"""The shard index of a store, and reads of its columns by row range, one shard at a time.

Opening a store costs O(shards): each committed shard's ``shard.json`` gives its row count, and
the Parquet and Arrow footers confirm it. Reads then touch only the shards (and, for vectors, the
record batches) that a row range covers, and the one column asked for. Vector files are memory
mapped for the duration of one read and unmapped after it, so resident memory is set by the rows
read, not by the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from qkscale.errors import StoreError
from qkscale.store import dtypes, layout
from qkscale.store.files import reading


@dataclass(frozen=True)
class Piece:
    """The part of a row range that lies in one shard."""

    position: int  # index of the shard in :attr:`ShardIndex.shards`
    shard: int  # its number
    local: slice  # rows within the shard
    target: slice  # rows within the result


@dataclass(frozen=True)
class ShardIndex:
    """Where each committed shard's rows lie in the store's row order."""

    shards: np.ndarray  # committed shard numbers, in order
    starts: np.ndarray  # [n + 1] first row of each shard; the last entry is the number of rows
    first_docs: np.ndarray  # first document of each shard
    n_docs: np.ndarray  # documents in each shard
    batch_starts: tuple[np.ndarray, ...]  # per shard: [batches + 1] first row of each vector record batch

    @property
    def n_tokens(self) -> int:
        return int(self.starts[-1])

    def bounds(self, rows: slice) -> tuple[int, int]:
        """``(start, stop)`` of a contiguous row range (a step is not allowed)."""
        start, stop, step = rows.indices(self.n_tokens)
        if step != 1:
            raise ValueError(f"row ranges are contiguous, not every {step}th row")
        return start, max(start, stop)

    def pieces(self, rows: slice) -> Iterator[Piece]:
        """The piece of ``rows`` in each shard it covers, in order."""
        start, stop = self.bounds(rows)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for position in range(max(first, 0), len(self.shards)):
            low, high = int(self.starts[position]), int(self.starts[position + 1])
            if low >= stop:
                break
            a, b = max(start, low), min(stop, high)
            if a < b:
                yield Piece(position, int(self.shards[position]), slice(a - low, b - low), slice(a - start, b - start))

    def groups(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, slice]]:
        """Shard by shard: which of the row ids ``rows`` lie in it, and the row range spanning them."""
        rows = np.asarray(rows, np.int64)
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for position in np.unique(shard_of).tolist():
            mine = np.flatnonzero(shard_of == position)
            yield mine, slice(int(rows[mine].min()), int(rows[mine].max()) + 1)

    def position_of_row(self, row: int) -> int:
        """Index (in :attr:`shards`) of the shard holding ``row``."""
        if not 0 <= row < self.n_tokens:
            raise IndexError(row)
        return int(np.searchsorted(self.starts, row, side="right")) - 1

    def position_of_doc(self, doc: int) -> int | None:
        """Index of the shard holding document ``doc``, or None."""
        position = int(np.searchsorted(self.first_docs, doc, side="right")) - 1
        if position < 0 or doc >= self.first_docs[position] + self.n_docs[position]:
            return None
        return position


def build_index(root: Path, shards: Sequence[int]) -> ShardIndex:
    """The index of the committed ``shards``, checking that each shard's files agree on its rows."""
    counts, first_docs, n_docs, batch_starts = [], [], [], []
    for shard in shards:
        folder = layout.shard_dir(root, shard)
        name = folder.relative_to(root)
        with reading(folder / layout.SHARD_INFO):
            info = json.loads((folder / layout.SHARD_INFO).read_text(encoding="utf-8"))
        with reading(folder / layout.TOKENS):
            token_rows = pq.read_metadata(folder / layout.TOKENS).num_rows
        with reading(folder / layout.VECTORS), pa.memory_map(str(folder / layout.VECTORS)) as source:
            reader = ipc.open_file(source)
            batch_rows = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
        vector_rows = sum(batch_rows)
        if not token_rows == vector_rows == info.get("n_tokens"):
            raise StoreError(
                f"shard {name} is inconsistent: {layout.TOKENS} has {token_rows} rows, {layout.VECTORS} "
                f"{vector_rows}, {layout.SHARD_INFO} says {info.get('n_tokens')}"
            )
        counts.append(vector_rows)
        first_docs.append(info["first_doc"])
        n_docs.append(info["n_docs"])
        batch_starts.append(np.cumsum([0, *batch_rows], dtype=np.int64))
    return ShardIndex(
        shards=np.asarray(shards, dtype=np.int64),
        starts=np.cumsum([0, *counts], dtype=np.int64),
        first_docs=np.asarray(first_docs, dtype=np.int64),
        n_docs=np.asarray(n_docs, dtype=np.int64),
        batch_starts=tuple(batch_starts),
    )


def read_vectors(
    root: Path, index: ShardIndex, column: str, rows: slice, head_dim: int, dtype: str = dtypes.DEFAULT
) -> np.ndarray:
    """``[n, head_dim]`` vectors of one column (one kind, layer and head) over ``rows``.

    ``dtype`` is the store's (its manifest's ``store_dtype``); the result is float16 for float16
    stores and float32 for the others (:func:`~qkscale.store.dtypes.read_numpy`).
    """
    start, stop = index.bounds(rows)
    out = np.empty((stop - start, head_dim), dtypes.read_numpy(dtype))
    for piece in index.pieces(rows):
        batches = index.batch_starts[piece.position]
        first = int(np.searchsorted(batches, piece.local.start, side="right")) - 1
        path = layout.shard_dir(root, piece.shard) / layout.VECTORS
        with reading(path), pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            for b in range(first, len(batches) - 1):
                low, high = int(batches[b]), int(batches[b + 1])
                if low >= piece.local.stop:
                    break
                a, z = max(piece.local.start, low), min(piece.local.stop, high)
                values = reader.get_batch(b).column(column).slice(a - low, z - a).flatten()
                at = piece.target.start + a - piece.local.start
                out[at : at + z - a] = dtypes.decode(values.to_numpy(zero_copy_only=True), dtype).reshape(-1, head_dim)
    return out


def read_vectors_at(
    root: Path, index: ShardIndex, column: str, ids: np.ndarray, head_dim: int, dtype: str = dtypes.DEFAULT
) -> np.ndarray:
    """``[len(ids), head_dim]`` vectors of one column at increasing row ``ids`` (typed as :func:`read_vectors`).

    Only the record batches holding those rows are mapped, and only their pages are touched.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and (ids[0] < 0 or ids[-1] >= index.n_tokens or np.any(np.diff(ids) < 0)):
        raise ValueError("row ids must be increasing and inside the store")
    out = np.empty((len(ids), head_dim), dtypes.read_numpy(dtype))
    shard_of = np.searchsorted(index.starts, ids, side="right") - 1
    for position in np.unique(shard_of).tolist():
        mine = np.flatnonzero(shard_of == position)
        local = ids[mine] - index.starts[position]
        batches = index.batch_starts[position]
        batch_of = np.searchsorted(batches, local, side="right") - 1
        path = layout.shard_dir(root, int(index.shards[position])) / layout.VECTORS
        with reading(path), pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            for b in np.unique(batch_of).tolist():
                chosen = np.flatnonzero(batch_of == b)
                values = reader.get_batch(b).column(column).flatten().to_numpy(zero_copy_only=True)
                out[mine[chosen]] = dtypes.decode(values.reshape(-1, head_dim)[local[chosen] - batches[b]], dtype)
    return out


def read_shard_columns(root: Path, shard: int, name: str, columns: Sequence[str] | None) -> pa.Table:
    """Columns of one shard's Parquet file ``name`` (token strings stay dictionary-encoded)."""
    path = layout.shard_dir(root, shard) / name
    try:
        schema = pq.read_schema(path)
        wanted = list(schema.names if columns is None else columns)
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise StoreError(f"{path.relative_to(root)} has no column {missing[0]!r}")
        dictionary = [c for c in wanted if schema.field(c).type == pa.string()]
        return pq.read_table(path, columns=wanted, read_dictionary=dictionary)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(f"{path.relative_to(root)} cannot be read: {str(exc).splitlines()[0]}") from None
