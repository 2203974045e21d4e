"""Which points a projection is fitted on, and which ones its quality is measured on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TRUST_POINTS = 5_000
TRUST_NEIGHBORS = 15
TRUST_SEED = 20230101  # fixed: every projection of a head is scored on the same points


@dataclass(frozen=True)
class DocOrder:
    """Token rows in document order (stable): ``rows_at(positions)`` gives the rows at those positions."""

    n_rows: int
    rows_at: Callable[[np.ndarray], np.ndarray]  # increasing positions -> row ids

    @classmethod
    def of(cls, docs: np.ndarray | DocOrder) -> DocOrder:
        """The order of an in-memory ``docs`` column (each row's document)."""
        if isinstance(docs, DocOrder):
            return docs
        order = np.argsort(docs, kind="stable")
        return cls(len(docs), lambda positions: order[positions])


def stratified_rows(docs: np.ndarray | DocOrder, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token rows spread evenly over documents: one random row from each of ``n`` equal strata.

    Rows are taken in document order, so each document gets a share of the sample proportional to
    its length (within one row), and the beginning and end of the corpus are all represented. Each
    stratum draws its own offset, so equal-length documents do not all give the same positions.
    """
    order = DocOrder.of(docs)
    total = order.n_rows
    if n >= total:
        return np.arange(total)
    step = total / n
    picks = ((np.arange(n) + rng.random(n)) * step).astype(np.int64)
    return np.sort(order.rows_at(np.minimum(picks, total - 1)))


def fit_points(docs: np.ndarray | DocOrder, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices into the ``[queries; keys]`` points to fit on: half queries, half keys.

    Query and key rows are drawn independently, so a token's query and key need not both be in.
    """
    docs = DocOrder.of(docs)
    n_tokens = docs.n_rows
    if 2 * n_tokens <= sample:
        return np.arange(2 * n_tokens)
    queries = stratified_rows(docs, sample // 2, rng)
    keys = stratified_rows(docs, sample - sample // 2, rng)
    return np.concatenate([queries, n_tokens + keys])


def trust_points(n_points: int) -> np.ndarray:
    """The fixed subsample that trustworthiness is measured on."""
    if n_points <= TRUST_POINTS:
        return np.arange(n_points)
    return np.sort(np.random.default_rng(TRUST_SEED).choice(n_points, TRUST_POINTS, replace=False))


def trustworthiness(x: np.ndarray, embedding: np.ndarray) -> float:
    """Trustworthiness (k=15) of ``embedding`` of the rows of ``x``, on the fixed subsample."""
    rows = trust_points(len(x))
    return subsample_trustworthiness(x[rows], embedding[rows])


def subsample_trustworthiness(x: np.ndarray, embedding: np.ndarray) -> float:
    """Trustworthiness (k=15) of ``embedding`` of ``x``, both already the rows of :func:`trust_points`."""
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    k = min(TRUST_NEIGHBORS, (len(x) - 1) // 2)
    return float(sklearn_trustworthiness(x, embedding, n_neighbors=k))
