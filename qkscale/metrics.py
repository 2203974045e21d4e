"""Per-head statistics that tell which heads are worth opening, from one streaming pass over Q/K.

Statistics are sums in the create / append / combine / finalize shape, so the same code runs per
document, per shard and across Dask partitions: :meth:`HeadSums.append` adds one document,
:meth:`HeadSums.combine` merges two partial sums, :meth:`HeadSums.finalize` turns them into one row
per (layer, head). Attention is recomputed from the stored vectors with the model's mask.
:class:`MetricsStage` runs one shard per unit and combines them (in this process or on Dask).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qkscale.attention import attention_weights
from qkscale.engine import QUIET, Progress, Stage, run_stage
from qkscale.errors import StoreError
from qkscale.store import Store, open_store
from qkscale.store.checks import check_finite, verify_hint
from qkscale.store.metrics_files import write_metrics

# Relative offsets j - i from -OFFSET_RADIUS to +OFFSET_RADIUS get a bin each; the two outer bins
# collect everything further left and further right.
OFFSET_RADIUS = 8
OFFSET_BINS = (
    [f"<{-OFFSET_RADIUS}"] + [str(o) for o in range(-OFFSET_RADIUS, OFFSET_RADIUS + 1)] + [f">{OFFSET_RADIUS}"]
)

# Per-query quantities averaged over all queries: column name -> description.
QUERY_MEANS = {
    "entropy": "attention entropy of a query (nats)",
    "attended_distance": "expected |i - j| in tokens between a query and the keys it attends to",
    "special_mass": "attention on special tokens ([CLS], [SEP], <|endoftext|>, ...)",
    "first_mass": "attention on the document's first token",
    "previous_mass": "attention on the previous token",
    "same_mass": "attention on the query's own token",
    "next_mass": "attention on the next token",
}


@dataclass
class HeadSums:
    """Running sums over documents for every (stored layer, head)."""

    n_queries: np.ndarray  # [L] queries seen per layer
    query_sums: np.ndarray  # [L, H, len(QUERY_MEANS)]
    offsets: np.ndarray  # [L, H, len(OFFSET_BINS)] attention mass by relative offset
    q_sum: np.ndarray  # [L, H, D]
    k_sum: np.ndarray  # [L, H, D]
    q_norm_sum: np.ndarray  # [L, H]
    k_norm_sum: np.ndarray  # [L, H]

    @classmethod
    def create(cls, n_layers: int, n_heads: int, head_dim: int) -> HeadSums:
        zeros = lambda *shape: np.zeros(shape, np.float64)  # noqa: E731
        return cls(
            n_queries=zeros(n_layers),
            query_sums=zeros(n_layers, n_heads, len(QUERY_MEANS)),
            offsets=zeros(n_layers, n_heads, len(OFFSET_BINS)),
            q_sum=zeros(n_layers, n_heads, head_dim),
            k_sum=zeros(n_layers, n_heads, head_dim),
            q_norm_sum=zeros(n_layers, n_heads),
            k_norm_sum=zeros(n_layers, n_heads),
        )

    def append(
        self,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        special: np.ndarray,
        scale: float,
        causal: bool,
        window: int | None = None,
    ) -> None:
        """Add documents of equal length for one layer's heads.

        ``q`` and ``k`` are ``[H, T, D]`` (one document) or ``[H, B, T, D]`` (B documents of T
        tokens), ``special`` is ``[T]`` or ``[B, T]``.
        """
        if q.ndim == 3:
            q, k, special = q[:, None], k[:, None], special[None]
        q = q.astype(np.float32)
        k = k.astype(np.float32)
        n_heads, n_docs, t, d = q.shape
        a = attention_weights(q.reshape(-1, t, d), k.reshape(-1, t, d), scale, causal, window)
        a = a.reshape(n_heads, n_docs, t, t)  # float32; the sums below are float64

        def total(x: np.ndarray) -> np.ndarray:  # summed over documents, queries (and keys) per head
            return x.reshape(n_heads, -1).sum(axis=1, dtype=np.float64)

        def diagonal(offset: int) -> np.ndarray:  # attention of each query on the key `offset` tokens away
            return total(np.diagonal(a, offset=offset, axis1=2, axis2=3)) if abs(offset) < t else np.zeros(n_heads)

        position = np.arange(t, dtype=np.float32)
        distance = np.abs(position[None, :] - position[:, None])
        sums = [
            -total(a * np.log(np.where(a > 0, a, 1.0))),
            total(a * distance),
            total(a * special[None, :, None, :]),
            total(a[..., 0]),
            diagonal(-1),
            diagonal(0),
            diagonal(1),
        ]
        self.n_queries[layer] += n_docs * t
        self.query_sums[layer] += np.stack(sums, axis=-1)
        band = np.stack([diagonal(o) for o in range(-OFFSET_RADIUS, OFFSET_RADIUS + 1)], axis=-1)
        left = total(np.tril(a, -OFFSET_RADIUS - 1))
        self.offsets[layer] += np.column_stack([left, band, n_docs * t - left - band.sum(axis=1)])
        self.q_sum[layer] += q.reshape(n_heads, -1, d).sum(axis=1, dtype=np.float64)
        self.k_sum[layer] += k.reshape(n_heads, -1, d).sum(axis=1, dtype=np.float64)
        self.q_norm_sum[layer] += total(np.linalg.norm(q, axis=3))
        self.k_norm_sum[layer] += total(np.linalg.norm(k, axis=3))

    def combine(self, other: HeadSums) -> HeadSums:
        """The sums of both parts (e.g. two shards)."""
        return HeadSums(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def finalize(self, layers: list[int], heads: list[int] | None = None) -> pd.DataFrame:
        """One row per (stored layer, stored head; all heads by default): the means of every statistic."""
        n = np.maximum(self.n_queries, 1)[:, None]
        heads = list(range(self.q_sum.shape[1])) if heads is None else heads
        n_heads = len(heads)
        table: dict[str, Any] = {
            "layer": np.repeat(layers, n_heads),
            "head": np.tile(heads, len(layers)),
            "n_queries": np.repeat(self.n_queries.astype(np.int64), n_heads),
        }
        means = self.query_sums / n[:, :, None]
        for index, name in enumerate(QUERY_MEANS):
            table[name] = means[:, :, index].ravel()
        table["centroid_distance"] = np.linalg.norm(
            self.q_sum / n[:, :, None] - self.k_sum / n[:, :, None], axis=2
        ).ravel()
        table["q_norm"] = (self.q_norm_sum / n).ravel()
        table["k_norm"] = (self.k_norm_sum / n).ravel()
        return pd.DataFrame(table)

    def offset_profiles(self) -> np.ndarray:
        """``[L*H, len(OFFSET_BINS)]`` mean attention mass by relative offset (rows sum to 1)."""
        n = np.maximum(self.n_queries, 1)[:, None, None]
        return (self.offsets / n).reshape(-1, len(OFFSET_BINS))


# Documents of one length are stacked into batches of at most this many attention weights.
BATCH_WEIGHTS = 1 << 22


def shard_sums(store: Store, shard: int) -> HeadSums:
    """The sums over one committed shard (the unit a Dask task computes), from its rows only.

    Documents of equal length go through :meth:`HeadSums.append` together, a batch at a time.
    """
    rows = store.shard_rows(shard)
    columns = store.token_columns(["position", "doc_length", "is_special"], rows)
    starts = np.flatnonzero(columns["position"].to_numpy() == 0)
    lengths = columns["doc_length"].to_numpy()[starts]
    special = columns["is_special"].to_numpy(zero_copy_only=False)
    heads = store.heads
    sums = HeadSums.create(len(store.layers), len(heads), store.head_dim)
    hint = verify_hint(store.path)
    for index, layer in enumerate(store.layers):
        q = np.stack([store.queries(layer, h, rows) for h in heads])
        k = np.stack([store.keys(layer, h, rows) for h in heads])
        for h, head_q, head_k in zip(heads, q, k, strict=True):
            check_finite(head_q, f"head L{layer}H{h} (queries)", rows.start, hint)
            check_finite(head_k, f"head L{layer}H{h} (keys)", rows.start, hint)
        scale, window = store.score_scale(layer), store.attention_window(layer)
        for length in np.unique(lengths):
            same = starts[lengths == length]
            per_batch = max(1, BATCH_WEIGHTS // (len(heads) * int(length) ** 2))
            for first in range(0, len(same), per_batch):
                ids = same[first : first + per_batch, None] + np.arange(length)  # [B, T] rows of the shard
                sums.append(index, q[:, ids], k[:, ids], special[ids], scale, store.causal, window)
    return sums


def head_similarity(profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity (1 - Jensen-Shannon distance of offset profiles) and a leaf ordering of heads.

    Heads that attend alike (previous token, far left, themselves...) get similarity near 1 and
    sit next to each other in the ordering (average-linkage clustering, optimal leaf order).
    """
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    distance = jensen_shannon_distances(profiles)
    similarity = 1.0 - distance
    if len(profiles) < 3:
        return similarity, np.arange(len(profiles))
    condensed = squareform(distance, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return similarity, leaves_list(tree)


def jensen_shannon_distances(profiles: np.ndarray) -> np.ndarray:
    """``[N, N]`` Jensen-Shannon distances (base 2, in [0, 1]) between the rows of ``profiles``."""
    p = profiles / profiles.sum(axis=1, keepdims=True)
    log_p = np.log2(np.where(p > 0, p, 1.0))
    distance = np.zeros((len(p), len(p)))
    for i in range(len(p)):  # one row at a time: memory stays [N, bins]
        m = 0.5 * (p[i] + p)
        log_m = np.log2(np.where(m > 0, m, 1.0))
        divergence = 0.5 * ((p[i] * (log_p[i] - log_m)).sum(axis=1) + (p * (log_p - log_m)).sum(axis=1))
        distance[i] = np.sqrt(np.maximum(divergence, 0.0))
    np.fill_diagonal(distance, 0.0)
    return distance


class MetricsStage(Stage):
    """One unit per shard (every head's sums over it); finish combines them and writes the metrics."""

    name = "metrics"
    work_unit = "shard"

    def __init__(self, store: Store):
        self.store = store

    def temp_folders(self) -> list[Path]:
        return [self.store.path]  # what an interrupted run left behind

    def store_path(self) -> Path:
        return self.store.path

    def units(self) -> list[int]:
        return self.store.committed_shards()

    def describe(self, shard: int) -> str:
        return f"metrics of shard {shard}"

    def run_unit(self, shard: int, progress: Progress = QUIET) -> HeadSums:
        return shard_sums(self.store, shard)

    def empty(self) -> HeadSums:
        return HeadSums.create(len(self.store.layers), len(self.store.heads), self.store.head_dim)

    def combine(self, sums: HeadSums, shard: int, part: HeadSums) -> HeadSums:
        return sums.combine(part)  # one running sum: memory does not grow with the shards

    def finish(self, sums: HeadSums) -> pd.DataFrame:
        table = sums.finalize(self.store.layers, self.store.heads)
        profiles = sums.offset_profiles()
        similarity, order = head_similarity(profiles)
        table["order"] = np.argsort(order)
        write_metrics(self.store.path, table, profiles, similarity, OFFSET_BINS)
        return self.store.metrics


def plan_metrics(store: Store | str | Path) -> MetricsStage:
    """Check that ``store`` can have metrics (complete, not empty); nothing is computed or written."""
    store = store if isinstance(store, Store) else open_store(store)
    if not store.complete:
        raise StoreError(f"store {store.path} is incomplete: finish `qkscale extract` before computing metrics")
    if store.n_tokens == 0:
        raise StoreError(f"store {store.path} holds no vectors")
    return MetricsStage(store)


def compute_metrics(store: Store | str | Path, progress: bool = True, force: bool = False) -> pd.DataFrame:
    """Compute and store every head's metrics and the head-similarity matrix; returns the metrics."""
    stage = plan_metrics(store)
    if stage.store.has_metrics and not force:
        return stage.store.metrics
    return run_stage(stage, progress=progress).value


# What `qkscale metrics` lists: (title, column, largest first).
_HIGHLIGHTS = [
    ("most focused (lowest entropy)", "entropy", False),
    ("broadest (highest entropy)", "entropy", True),
    ("previous-token heads", "previous_mass", True),
    ("next-token heads", "next_mass", True),
    ("self heads", "same_mass", True),
    ("sink heads (mass on special tokens)", "special_mass", True),
    ("longest reach (attended distance)", "attended_distance", True),
    ("largest q-k centroid gap", "centroid_distance", True),
]


def format_metrics(table: pd.DataFrame, top: int = 3) -> str:
    """A few lines naming the heads that stand out on each statistic."""
    layers = table["layer"].nunique()
    lines = [
        f"{len(table)} heads ({layers} layers x {table['head'].nunique()}), "
        f"{int(table['n_queries'].iloc[0]):,} queries per head"
    ]
    for title, column, largest in _HIGHLIGHTS:
        best = table.nlargest(top, column) if largest else table.nsmallest(top, column)
        heads = ", ".join(f"L{r.layer}H{r.head} {getattr(r, column):.2f}" for r in best.itertuples())
        lines.append(f"{title:<38} {heads}")
    return "\n".join(lines)
