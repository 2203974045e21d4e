"""Which points a projection is fitted on, and which ones its quality is measured on."""

from __future__ import annotations

import numpy as np

TRUST_POINTS = 5_000
TRUST_NEIGHBORS = 15
TRUST_SEED = 20230101  # fixed: every projection of a head is scored on the same points


def stratified_rows(docs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token rows spread evenly over documents: one random row from each of ``n`` equal strata.

    Rows are taken in document order, so each document gets a share of the sample proportional to
    its length (within one row), and the beginning and end of the corpus are all represented. Each
    stratum draws its own offset, so equal-length documents do not all give the same positions.
    """
    total = len(docs)
    if n >= total:
        return np.arange(total)
    by_document = np.argsort(docs, kind="stable")
    step = total / n
    picks = ((np.arange(n) + rng.random(n)) * step).astype(np.int64)
    return np.sort(by_document[np.minimum(picks, total - 1)])


def fit_points(docs: np.ndarray, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into the ``[queries; keys]`` point array to fit on: half queries, half keys.

    Query and key rows are drawn independently, so a token's query and key need not both be in.
    """
    n_tokens = len(docs)
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
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    rows = trust_points(len(x))
    k = min(TRUST_NEIGHBORS, (len(rows) - 1) // 2)
    return float(sklearn_trustworthiness(x[rows], embedding[rows], n_neighbors=k))
