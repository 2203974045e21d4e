"""The data behind every dashboard session: one store, loaded once and shared, with its derived tables.

Panel creates a new app per browser session; each takes the same :class:`DashboardData`, so the
token table, contexts, recently opened heads and recently shown attention are read and kept once
per server.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.dashboard.cache import LRUCache
from qkscale.dashboard.tokens import SearchResult, search_tokens, token_contexts, token_kinds
from qkscale.errors import StoreError
from qkscale.store import Store, open_store

HEADS_KEPT = 3  # heads' point tables kept in memory (each ~100 MB at 2M points)
ATTENTION_KEPT = 128  # (document, head) attention matrices kept (each [T, T] float32: 1 MB at T = 512)
DEFAULT_METHODS = ("umap", "tsne", "pca")


@dataclass(frozen=True)
class HeadPoints:
    """One head's projected points with everything the single view colours, hovers and looks up by."""

    layer: int
    head: int
    method: str
    dims: int
    frame: pd.DataFrame  # x, y (z), kind, token_kind, rel_position, norm, doc, position, token, context, id
    rows: dict[str, np.ndarray]  # 'q'/'k' -> point row of each token id (-1 where not projected)
    labels: dict[str, np.ndarray]  # categorical column -> its categories as an object array

    def values(self, column: str, picked: np.ndarray) -> np.ndarray:
        """Column ``column`` at rows ``picked``; categories come out as strings without decoding the column."""
        series = self.frame[column]
        if column in self.labels:
            return self.labels[column][series.cat.codes.to_numpy()[picked]]
        return series.to_numpy()[picked]

    def point_of(self, token: int, kind: str) -> int:
        """The row of token ``token``'s query or key in :attr:`frame`, or -1."""
        rows = self.rows[kind]
        return int(rows[token]) if 0 <= token < len(rows) else -1


class DashboardData:
    """A store and what the dashboard derives from it, shared by every session."""

    def __init__(self, store: Store | str):
        self.store = store if isinstance(store, Store) else open_store(store)
        if not self.store.committed_shards():
            raise StoreError(f"store {self.store.path} holds no extracted shards yet")
        self._heads: LRUCache[HeadPoints] = LRUCache(HEADS_KEPT)
        self._attention: LRUCache[tuple[np.ndarray, np.ndarray]] = LRUCache(ATTENTION_KEPT)

    # -- store-wide tables (computed on first use, then kept) --------------------------------
    @functools.cached_property
    def tokens(self) -> pd.DataFrame:
        return self.store.tokens

    @functools.cached_property
    def vocabulary(self) -> pd.Categorical:
        return pd.Categorical(self.tokens["token"])

    @functools.cached_property
    def kinds(self) -> pd.Categorical:
        return token_kinds(self.tokens)

    @functools.cached_property
    def contexts(self) -> pd.Categorical:
        return token_contexts(self.tokens)

    @functools.cached_property
    def heads(self) -> list[tuple[int, int]]:
        """Every stored (layer, head), layer by layer."""
        return [(layer, head) for layer in self.store.layers for head in self.store.heads]

    def projections(self) -> dict[str, list[tuple[int, int]]]:
        """Which heads have which projections (read fresh: `qkscale project` may add some)."""
        return self.store.projections()

    def methods(self) -> list[str]:
        """Projection methods present in the store: the one covering the most heads first, then umap, tsne, pca."""
        covered: dict[str, int] = {}
        for key, heads in self.projections().items():
            method = key.rsplit("-", 1)[0]
            covered[method] = max(covered.get(method, 0), len(heads))
        preference = {m: i for i, m in enumerate(DEFAULT_METHODS)}
        return sorted(covered, key=lambda m: (-covered[m], preference.get(m, len(preference)), m))

    def has_projection(self, layer: int, head: int, method: str, dims: int) -> bool:
        return (layer, head) in self.projections().get(f"{method}-{dims}d", [])

    @functools.cached_property
    def metrics(self) -> pd.DataFrame | None:
        return self.store.metrics if self.store.has_metrics else None

    # -- per head --------------------------------------------------------------------------
    def head_points(self, layer: int, head: int, method: str, dims: int) -> HeadPoints:
        """One head's points (kept for the :data:`HEADS_KEPT` most recently used heads)."""
        return self._heads.get((layer, head, method, dims), lambda: self._load_head(layer, head, method, dims))

    def _load_head(self, layer: int, head: int, method: str, dims: int) -> HeadPoints:
        projection = self.store.projection(layer, head, method, dims)
        ids = projection["token"].to_numpy()
        is_key = (projection["kind"] == "k").to_numpy()
        norms = {
            kind: np.linalg.norm(vectors.astype(np.float32), axis=1)
            for kind, vectors in (("q", self.store.queries(layer, head)), ("k", self.store.keys(layer, head)))
        }
        tokens = self.tokens
        frame = pd.DataFrame({axis: projection[axis].to_numpy() for axis in ("x", "y", "z")[:dims]})
        frame["kind"] = pd.Categorical.from_codes(is_key.astype(np.int8), ["q", "k"])
        frame["token_kind"] = self.kinds[ids]
        frame["rel_position"] = tokens["rel_position"].to_numpy()[ids]
        frame["norm"] = np.where(is_key, norms["k"][ids], norms["q"][ids])
        frame["doc"] = tokens["doc"].to_numpy()[ids]
        frame["doc_colour"] = pd.Categorical.from_codes(
            (frame["doc"].to_numpy() % 10).astype(np.int8), [str(i) for i in range(10)]
        )
        frame["position"] = tokens["position"].to_numpy()[ids]
        frame["token"] = self.vocabulary[ids]
        frame["context"] = self.contexts[ids]
        frame["id"] = ids
        frame["row"] = np.arange(len(frame), dtype=np.int64)
        rows = {}
        for code, kind in enumerate(("q", "k")):
            lookup = np.full(len(tokens), -1, np.int64)
            mine = np.flatnonzero(is_key == bool(code))
            lookup[ids[mine]] = mine
            rows[kind] = lookup
        labels = {
            column: np.asarray(frame[column].cat.categories, dtype=object)
            for column in frame.columns
            if isinstance(frame[column].dtype, pd.CategoricalDtype)
        }
        return HeadPoints(layer, head, method, dims, frame, rows, labels)

    # -- documents and attention -----------------------------------------------------------
    def doc_of(self, token: int) -> int:
        """The document of token ``token``."""
        return int(self.tokens["doc"].iat[token])

    def document_tokens(self, doc: int) -> pd.DataFrame:
        """The rows of ``doc`` in :attr:`tokens`, with their token ids as ``id``."""
        rows = self.store.doc_rows(doc)
        frame = self.tokens.iloc[rows].copy()
        frame["id"] = np.arange(rows.start, rows.stop)
        return frame

    def document_texts(self, doc: int) -> list[str]:
        """The text of every token of ``doc``."""
        return self.tokens["token"].iloc[self.store.doc_rows(doc)].astype(str).tolist()

    def attention(self, doc: int, layer: int, head: int, hide_special: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``doc``'s attention for one head and the positions it covers (read-only arrays, shared by sessions).

        With ``hide_special``, special tokens' rows and columns are dropped and every row is
        renormalised to sum to 1, as AttentionViz does. The store computes a document's attention
        once for both: the :data:`ATTENTION_KEPT` most recently shown are kept.
        """
        key = (doc, layer, head, hide_special)
        return self._attention.get(key, lambda: self._compute_attention(*key))

    def _compute_attention(self, doc: int, layer: int, head: int, hide_special: bool) -> tuple[np.ndarray, np.ndarray]:
        if hide_special:
            weights, positions = self.attention(doc, layer, head)
            keep = ~self.tokens["is_special"].to_numpy()[self.store.doc_rows(doc)]
            positions = positions[keep]
            weights = weights[np.ix_(keep, keep)]
            totals = weights.sum(axis=1, keepdims=True)
            weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
        else:
            weights = np.asarray(self.store.attention(doc, layer, head))
            positions = np.arange(len(weights))
        weights.flags.writeable = positions.flags.writeable = False
        return weights, positions

    def token_attention(
        self, token: int, layer: int, head: int, hide_special: bool = False
    ) -> tuple[np.ndarray, np.ndarray, int | None]:
        """The attention of ``token``'s document, its positions, and the token's row in them (None if hidden)."""
        doc = self.doc_of(token)
        weights, positions = self.attention(doc, layer, head, hide_special)
        where = np.flatnonzero(positions == token - self.store.doc_rows(doc).start)
        return weights, positions, int(where[0]) if len(where) else None

    def top_links(
        self, token: int, kind: str, layer: int, head: int, k: int = 5, hide_special: bool = False
    ) -> pd.DataFrame:
        """The ``k`` strongest links of one token within its document.

        For a query: the keys it attends to most; for a key: the queries attending to it most.
        Columns: ``id`` (the other token), ``position``, ``weight``.
        """
        weights, positions, row = self.token_attention(token, layer, head, hide_special)
        if row is None:
            return pd.DataFrame({"id": [], "position": [], "weight": []})
        line = attention_line(weights, row, kind)
        best = np.argsort(-line, kind="stable")[:k]
        best = best[line[best] > 0]
        start = self.store.doc_rows(self.doc_of(token)).start
        return pd.DataFrame({"id": start + positions[best], "position": positions[best], "weight": line[best]})

    def search(self, query: str, mode: str) -> SearchResult:
        return search_tokens(self.tokens, self.vocabulary, query, mode)

    def describe_token(self, token: int) -> str:
        row = self.tokens.iloc[token]
        return f"{row['token']!r} (document {row['doc']}, position {row['position']})"


def attention_line(weights: np.ndarray, row: int, kind: str) -> np.ndarray:
    """What row ``row``'s token attends to (as a query, ``kind`` 'q') or is attended by (as a key)."""
    return weights[row] if kind == "q" else weights[:, row]
