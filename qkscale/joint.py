"""Joint normalisation of one head's queries and keys (AttentionViz), for numpy or cupy arrays.

Queries are scaled by ``c`` and keys by ``1/c`` (``q·k`` is unchanged), then the keys are
translated so that their centroid lands on the query centroid (each query's scores shift by one
constant, which softmax ignores). ``c`` is chosen so that, after the translation, the mean query
norm equals the mean key norm. Attention is the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

# Bisection halves an interval of u = 1/c**2; 200 halvings reach float64's resolution from any bracket.
_BISECTION_STEPS = 200


def array_module(array: Any) -> ModuleType:
    """numpy, or cupy for a cupy array (cupy is imported only if it already is)."""
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        return cupy
    return np


@dataclass(frozen=True)
class JointNormalization:
    """The transform applied: ``q2 = scale*q``, ``k2 = k/scale + shift``."""

    scale: float
    translate: bool
    query_centroid_norm: float
    key_centroid_norm: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "translate": self.translate,
            "query_centroid_norm": self.query_centroid_norm,
            "key_centroid_norm": self.key_centroid_norm,
        }


def _mean_norm(x: Any, xp: ModuleType) -> float:
    return float(xp.sqrt((x * x).sum(axis=1, dtype=xp.float64)).mean())


def _solve_scale(q: Any, k: Any, translate: bool, xp: ModuleType) -> float:
    """The ``c`` that equalises mean norms of ``c*q`` and the (translated) ``k/c``."""
    query_norm = _mean_norm(q, xp)
    if not translate:
        key_norm = _mean_norm(k, xp)
        return float(np.sqrt(key_norm / query_norm)) if query_norm > 0 and key_norm > 0 else 1.0
    # After translation a key is (k - mu_k)/c + c*mu_q; dividing every norm by c, the condition
    # reads g(u) = mean|u*(k - mu_k) + mu_q| = mean|q| with u = 1/c**2. g is convex with g'(0) = 0,
    # so it is non-decreasing for u >= 0 and bisection finds the root. Work per step is O(n).
    mu_q = q.mean(axis=0, dtype=xp.float64)
    centred = k - k.mean(axis=0, dtype=xp.float64).astype(k.dtype)
    a = (centred * centred).sum(axis=1, dtype=xp.float64)
    b = 2.0 * (centred @ mu_q.astype(k.dtype)).astype(xp.float64)
    del centred
    m = float(mu_q @ mu_q)

    def g(u: float) -> float:
        return float(xp.sqrt(xp.maximum(a * u * u + b * u + m, 0.0)).mean())

    if query_norm <= np.sqrt(m) or float(a.max()) == 0.0:  # all queries alike or all keys alike
        return 1.0
    high = 1.0
    while g(high) < query_norm:
        high *= 2.0
    low = 0.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if g(middle) < query_norm:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15 * high:
            break
    return float(1.0 / np.sqrt(0.5 * (low + high)))


def normalize(q: Any, k: Any, translate: bool = True, scale: bool = True) -> tuple[Any, Any]:
    """Jointly normalised ``(q2, k2)`` of one head (float32, same array library as the input)."""
    q2, k2, _ = normalize_with_info(q, k, translate=translate, scale=scale)
    return q2, k2


def normalize_with_info(
    q: Any, k: Any, translate: bool = True, scale: bool = True
) -> tuple[Any, Any, JointNormalization]:
    """:func:`normalize`, also returning the transform that was applied."""
    xp = array_module(q)
    q2 = xp.array(q, dtype=xp.float32)  # float32 copies; every reduction accumulates in float64
    k2 = xp.array(k, dtype=xp.float32)
    if q2.ndim != 2 or q2.shape != k2.shape or q2.shape[0] == 0:
        raise ValueError(f"queries and keys must be non-empty arrays of one shape, not {q2.shape} and {k2.shape}")
    mu_q = q2.mean(axis=0, dtype=xp.float64)
    mu_k = k2.mean(axis=0, dtype=xp.float64)
    c = _solve_scale(q2, k2, translate, xp) if scale else 1.0
    q2 *= xp.float32(c)
    k2 /= xp.float32(c)
    if translate:
        k2 += (c * mu_q - mu_k / c).astype(xp.float32)
    info = JointNormalization(
        scale=c,
        translate=translate,
        query_centroid_norm=float(xp.linalg.norm(mu_q)),
        key_centroid_norm=float(xp.linalg.norm(mu_k)),
    )
    return q2, k2, info
