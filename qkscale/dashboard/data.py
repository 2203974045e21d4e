"""The data behind every dashboard session: one store, opened once and shared, read a window at a time.

Panel creates a new app per browser session; each takes the same :class:`DashboardData`. Nothing
here grows with the corpus: token strings come from the vocabulary and per-shard columns, a head
is its memory-mapped point map, and contexts are made only for the token hovered or picked. The
dashboard never writes into the store: maps and thumbnails are written by `qkscale project`.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from qkscale.dashboard.cache import LRUCache
from qkscale.dashboard.matrix import MatrixImage, matrix_image
from qkscale.dashboard.points import KINDS, HeadPoints
from qkscale.dashboard.tokens import CONTEXT_RADIUS, SearchResult, context_text, search_tokens
from qkscale.errors import StoreError
from qkscale.maps.attributes import CATEGORIES, PointAttributes
from qkscale.maps.build import map_path
from qkscale.maps.thumbnail import thumbnail_path
from qkscale.store import Store, open_store
from qkscale.store.kinds import TOKEN_KINDS
from qkscale.store.projections import projection_path

HEADS_KEPT = 8  # heads' maps kept open (memory-mapped: cheap)
ATTENTION_KEPT = 128  # (document, head) attention matrices kept (each [T, T] float32: 1 MB at T = 512)
TOKENS_KEPT = 4096  # hovered tokens' descriptions kept
MATRICES_KEPT = 8  # composed matrices (one per projection, ordering and label) kept
DEFAULT_METHODS = ("umap", "tsne", "pca")


class DashboardData:
    """A store and what the dashboard derives from it, shared by every session."""

    def __init__(self, store: Store | str):
        self.store = store if isinstance(store, Store) else open_store(store)
        if not self.store.committed_shards():
            raise StoreError(f"store {self.store.path} holds no extracted shards yet")
        self._heads: LRUCache[HeadPoints] = LRUCache(HEADS_KEPT)
        self._attention: LRUCache[tuple[np.ndarray, np.ndarray]] = LRUCache(ATTENTION_KEPT)
        self._tokens: LRUCache[dict] = LRUCache(TOKENS_KEPT)
        self._matrices: LRUCache[MatrixImage] = LRUCache(MATRICES_KEPT)

    # -- tokens ------------------------------------------------------------------------------
    @functools.cached_property
    def vocabulary(self) -> np.ndarray:
        return self.store.vocabulary

    def token_texts(self, tokens: np.ndarray) -> np.ndarray:
        """The text of each of ``tokens`` (increasing ids), read one shard at a time."""
        tokens = np.asarray(tokens, np.int64)
        out = np.empty(len(tokens), object)
        for mine, rows in self.store.shard_index.groups(tokens):
            out[mine] = self.vocabulary[self.store.token_codes(rows)[tokens[mine] - rows.start]]
        return out

    def token_text(self, token: int) -> str:
        return self.token_info(token)["token"]

    def token_info(self, token: int) -> dict:
        """``token``'s text, document, position and context (its neighbours in its document)."""
        return self._tokens.get(token, lambda: self._read_token(token))

    def _read_token(self, token: int) -> dict:
        rows = slice(max(token - CONTEXT_RADIUS, 0), min(token + CONTEXT_RADIUS + 1, self.store.n_tokens))
        table = self.store.token_columns(["doc", "position"], rows)
        docs = table.column("doc").to_numpy()
        here = token - rows.start
        texts = self.vocabulary[self.store.token_codes(rows)].tolist()
        same = [i for i in range(len(texts)) if docs[i] == docs[here]]
        words = [texts[i] for i in same]
        return {
            "token": texts[here],
            "doc": int(docs[here]),
            "position": int(table.column("position")[here].as_py()),
            "context": context_text(words, same.index(here)),
        }

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

    def matrix(self, method: str, dims: int, ordering: str, metric: str | None) -> MatrixImage:
        """Every head's thumbnail on one canvas, composed once for all sessions (again once `project` writes one)."""
        projected = tuple(self.projections().get(f"{method}-{dims}d", []))
        written = tuple(_modified(thumbnail_path(self.store.path, method, dims, *head)) for head in projected)
        return self._matrices.get(
            (method, dims, ordering, metric, projected, written),
            lambda: matrix_image(self.store, self.heads, set(projected), method, dims, ordering, self.metrics, metric),
        )

    # -- per head --------------------------------------------------------------------------
    def head_points(self, layer: int, head: int, method: str, dims: int) -> HeadPoints:
        """One head's points (kept for the :data:`HEADS_KEPT` most recently used heads)."""
        return self._heads.get((layer, head, method, dims), lambda: self._load_head(layer, head, method, dims))

    def _load_head(self, layer: int, head: int, method: str, dims: int) -> HeadPoints:
        projection = projection_path(self.store.path, method, dims, layer, head)
        if not projection.is_file():
            raise StoreError(f"layer {layer} head {head} has no {method} {dims}D projection")
        folder = map_path(self.store.path, method, dims, layer, head) if dims == 2 else None
        return HeadPoints.load(projection, folder, layer, head, method, dims)

    def hover(self, points: HeadPoints, row: int) -> dict:
        """The hover columns of the point at ordered row ``row`` of ``points``' map."""
        token, kind = points.map.point(row)
        return {"kind": kind, **self.token_info(token)}

    def sample_3d(self, points: HeadPoints, show: tuple[str, ...]) -> pd.DataFrame:
        """A sample of the shown points with their axes, colouring columns and hover text."""
        rows = points.sample(show)
        frame = pd.DataFrame(points.projection.read(rows, [*points.projection.axes, "token"]))
        token, is_key = frame["token"].to_numpy(), (rows >= points.n_tokens).astype(np.uint8)
        attributes = PointAttributes(self.store, points.layer, points.head)(token, is_key)
        frame["kind"] = pd.Categorical.from_codes(is_key.astype(np.int8), list(KINDS))
        for name, values in attributes.items():
            categories = CATEGORIES.get(name)
            frame[name] = pd.Categorical.from_codes(values.astype(np.int8), categories) if categories else values
        frame["hover"] = self.token_texts(token) + np.where(is_key, " (key)", " (query)")
        return frame

    # -- documents and attention -----------------------------------------------------------
    def doc_of(self, token: int) -> int:
        """The document of token ``token``."""
        return self.store.doc_of(token)

    @functools.cached_property
    def first_doc(self) -> int:
        return self.store.doc_of(0)

    def document_tokens(self, doc: int) -> pd.DataFrame:
        """The token rows of ``doc`` with their ``token`` text, ``token_kind`` and ids as ``id``."""
        rows = self.store.doc_rows(doc)
        frame = self.store.token_columns(rows=rows).to_pandas()
        codes = self.store.token_codes(rows)
        frame["token"] = self.vocabulary[codes]
        patch_row = frame["patch_row"].to_numpy() if "patch_row" in frame else None
        kinds = self.store.vocabulary_classes.kinds(
            codes, frame["position"].to_numpy(), frame["is_special"].to_numpy(), patch_row
        )
        frame["token_kind"] = pd.Categorical.from_codes(kinds, TOKEN_KINDS)
        frame["id"] = np.arange(rows.start, rows.stop)
        return frame

    def document_texts(self, doc: int) -> list[str]:
        """The text of every token of ``doc``."""
        return self.vocabulary[self.store.token_codes(self.store.doc_rows(doc))].tolist()

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
            keep = ~self.store.token_column("is_special", self.store.doc_rows(doc)).astype(bool)
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
        return search_tokens(self.store, query, mode)

    def describe_token(self, token: int) -> str:
        info = self.token_info(token)
        return f"{info['token']!r} (document {info['doc']}, position {info['position']})"


def attention_line(weights: np.ndarray, row: int, kind: str) -> np.ndarray:
    """What row ``row``'s token attends to (as a query, ``kind`` 'q') or is attended by (as a key)."""
    return weights[row] if kind == "q" else weights[:, row]


def _modified(path) -> int:
    """``path``'s modification time in ns, or -1 where it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return -1
