"""One head of a store as jointly normalised points, read in row ranges or by row ids, never whole."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from qkscale.joint import JointNormalization, Pairs, fit_normalization
from qkscale.project.placement import chunks
from qkscale.project.sampling import DocOrder
from qkscale.store import Store
from qkscale.store.checks import check_finite, verify_hint

CHUNK_ROWS = 262_144  # token rows read at once: 16 MB of float16 per kind at head_dim 32


def head_pairs(store: Store, layer: int, head: int, chunk_rows: int = CHUNK_ROWS) -> Pairs:
    """``(queries, keys)`` of successive row ranges of one head, anew on every call (one per pass).

    A chunk holding a NaN or an infinity is a :class:`~qkscale.errors.NonFiniteError`.
    """
    hint = verify_hint(store.path)

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for rows in chunks(store.n_tokens, chunk_rows):
            q, k = store.queries(layer, head, rows), store.keys(layer, head, rows)
            check_finite(q, f"head L{layer}H{head} (queries)", rows.start, hint)
            check_finite(k, f"head L{layer}H{head} (keys)", rows.start, hint)
            yield q, k

    return pairs


def unit_rows(points: np.ndarray) -> np.ndarray:
    """``points`` scaled in place onto the unit sphere (where Euclidean distance ranks like cosine)."""
    points /= np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    return points


class StoredPoints:
    """``[queries; keys]`` of one stored head, normalised, indexed like an array of ``2 * n_tokens`` rows."""

    def __init__(self, store: Store, layer: int, head: int, normalization: JointNormalization, cosine: bool):
        self.store, self.layer, self.head = store, layer, head
        self.normalization, self.cosine = normalization, cosine
        self.n_tokens = store.n_tokens

    def __len__(self) -> int:
        return 2 * self.n_tokens

    def __getitem__(self, ids: slice | np.ndarray) -> np.ndarray:
        """Points at a range of indices or at increasing indices (queries are ``0..n-1``, keys ``n..2n-1``)."""
        n = self.n_tokens
        if isinstance(ids, slice):
            start, stop, _ = ids.indices(2 * n)
            parts = [self._queries(slice(start, min(stop, n))) if start < n else None]
            parts.append(self._keys(slice(max(start, n) - n, stop - n)) if stop > n else None)
        else:
            ids = np.asarray(ids, dtype=np.int64)
            split = int(np.searchsorted(ids, n))
            parts = [self._queries(ids[:split]) if split else None]
            parts.append(self._keys(ids[split:] - n) if split < len(ids) else None)
        parts = [p for p in parts if p is not None]
        points = (
            parts[0] if len(parts) == 1 else np.concatenate(parts or [np.empty((0, self.store.head_dim), np.float32)])
        )
        return unit_rows(points) if self.cosine else points

    def _queries(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.normalization.queries(self.store.queries(self.layer, self.head, rows))

    def _keys(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.normalization.keys(self.store.keys(self.layer, self.head, rows))


def stored_head(store: Store, layer: int, head: int, translate: bool, scale: bool, cosine: bool) -> StoredPoints:
    """One head's normalised points, the normalisation fitted in streaming passes over the store."""
    normalization = fit_normalization(head_pairs(store, layer, head), translate=translate, scale=scale)
    return StoredPoints(store, layer, head, normalization, cosine)


def store_doc_order(store: Store) -> DocOrder:
    """The store's rows in document order, one shard at a time (shards hold increasing documents)."""
    index = store.shard_index

    def rows_at(positions: np.ndarray) -> np.ndarray:
        rows = np.empty(len(positions), np.int64)
        shard_of = np.searchsorted(index.starts, positions, side="right") - 1
        for position in np.unique(shard_of).tolist():
            mine = np.flatnonzero(shard_of == position)
            start, stop = int(index.starts[position]), int(index.starts[position + 1])
            order = np.argsort(store.token_column("doc", slice(start, stop)), kind="stable")
            rows[mine] = start + order[positions[mine] - start]
        return rows

    return DocOrder(index.n_tokens, rows_at)
