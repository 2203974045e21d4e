"""Joint normalisation of one head's queries and keys (AttentionViz), for numpy or cupy arrays.

Queries are scaled by ``c`` and keys by ``1/c`` (``q·k`` is unchanged), then the keys are
translated so that their centroid lands on the query centroid (each query's scores shift by one
constant, which softmax ignores). ``c`` is chosen so that, after the translation, the mean query
norm equals the mean key norm. Attention is the same before and after.

It never makes a NaN: a NaN or an infinity among the vectors is a
:class:`~qkscale.errors.NonFiniteError`, and a degenerate head (zero norms, all queries or all
keys alike) keeps ``c = 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from qkscale.errors import NonFiniteError

# Newton's method from the right converges quadratically; this only bounds a pathological case.
_NEWTON_STEPS = 100
# Queries whose mean norm exceeds their centroid's by less than this (relative) are alike: the
# excess is float32 rounding of the norms, and the scale solved from it would be noise.
_ALIKE = 1e-6


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
    shift: tuple[float, ...] = ()  # scale*mu_q - mu_k/scale when translating, else empty

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "translate": self.translate,
            "query_centroid_norm": self.query_centroid_norm,
            "key_centroid_norm": self.key_centroid_norm,
            "shift": list(self.shift),
        }

    def apply(self, q: Any, k: Any) -> tuple[Any, Any]:
        """``(q2, k2)`` as float32 copies of any rows of the head (row by row: chunks change nothing)."""
        return self.queries(q), self.keys(k)

    def queries(self, q: Any) -> Any:
        xp = array_module(q)
        q2 = xp.array(q, dtype=xp.float32)
        q2 *= xp.float32(self.scale)
        return q2

    def keys(self, k: Any) -> Any:
        xp = array_module(k)
        k2 = xp.array(k, dtype=xp.float32)
        k2 /= xp.float32(self.scale)
        if self.shift:
            k2 += xp.asarray(np.asarray(self.shift, np.float32))
        return k2


Pairs = Callable[[], Iterable[tuple[Any, Any]]]  # each call yields (queries, keys) of successive row ranges


def _norms(x: Any, xp: ModuleType) -> Any:
    return xp.sqrt((x * x).sum(axis=1, dtype=xp.float64))


def fit_normalization(pairs: Pairs, translate: bool = True, scale: bool = True) -> JointNormalization:
    """The joint normalisation of a head read in chunks: ``pairs()`` is iterated once per pass.

    Pass 1 sums centroids and mean norms; without translation that gives ``c``. With it, ``c``
    solves ``g(u) = mean|u*(k - mu_k) + mu_q| = mean|q|`` for ``u = 1/c**2`` (dividing every
    translated key's norm by ``c``). ``g`` is convex with ``g'(0) = 0``, so Newton's method started
    right of the root (where ``g(u) >= u*mean|k - mu_k| - |mu_q| >= mean|q|``) falls monotonically
    onto it: a handful of passes, each O(rows) in time and O(chunk) in memory.
    """
    n, sums, xp = 0, None, np
    for q, k in pairs():
        xp = array_module(q)
        q, k = xp.asarray(q, dtype=xp.float32), xp.asarray(k, dtype=xp.float32)
        if q.ndim != 2 or q.shape != k.shape:
            raise ValueError(f"queries and keys must be arrays of one shape, not {q.shape} and {k.shape}")
        part = (
            q.sum(axis=0, dtype=xp.float64),
            k.sum(axis=0, dtype=xp.float64),
            _norms(q, xp).sum(),
            _norms(k, xp).sum(),
        )
        sums = part if sums is None else tuple(a + b for a, b in zip(sums, part, strict=True))
        n += len(q)
    if not n:
        raise ValueError("queries and keys must be non-empty arrays of one shape")
    if not all(bool(xp.isfinite(total).all()) for total in sums):  # NaN and infinities carry through the sums
        raise NonFiniteError("queries or keys hold NaN or infinite values: they have no joint normalisation")
    mu_q, mu_k = sums[0] / n, sums[1] / n
    query_norm, key_norm = float(sums[2]) / n, float(sums[3]) / n
    if not scale:
        c = 1.0
    elif not translate:
        c = float(np.sqrt(key_norm / query_norm)) if query_norm > 0 and key_norm > 0 else 1.0
    else:
        c = _solve_translated_scale(pairs, n, mu_q, mu_k, query_norm, xp)
    shift = tuple(float(v) for v in (c * mu_q - mu_k / c).tolist()) if translate else ()
    return JointNormalization(
        scale=c,
        translate=translate,
        query_centroid_norm=float(xp.linalg.norm(mu_q)),
        key_centroid_norm=float(xp.linalg.norm(mu_k)),
        shift=shift,
    )


def _solve_translated_scale(pairs: Pairs, n: int, mu_q: Any, mu_k: Any, target: float, xp: ModuleType) -> float:
    m = float(mu_q @ mu_q)

    def passes(u: float | None) -> tuple[float, float, float]:
        """Over all keys: mean |k - mu_k| and max a (u None), else g(u) and g'(u)."""
        total, slope, largest = 0.0, 0.0, 0.0
        for _, k in pairs():
            centred = xp.asarray(k, dtype=xp.float32) - mu_k.astype(xp.float32)
            a = (centred * centred).sum(axis=1, dtype=xp.float64)
            if u is None:
                total += float(xp.sqrt(a).sum())
                largest = max(largest, float(a.max()))
                continue
            b = 2.0 * (centred @ mu_q.astype(xp.float32)).astype(xp.float64)
            root = xp.sqrt(xp.maximum(a * u * u + b * u + m, 1e-300))
            total += float(root.sum())
            slope += float(((2.0 * a * u + b) / (2.0 * root)).sum())
        return total / n, slope / n, largest

    if target <= np.sqrt(m) * (1.0 + _ALIKE):  # all queries alike (to rounding)
        return 1.0
    spread, _, largest = passes(None)
    if largest == 0.0:  # all keys alike
        return 1.0
    u = (target + np.sqrt(m)) / spread
    for _ in range(_NEWTON_STEPS):
        g, slope, _ = passes(u)
        if slope <= 0.0:
            break
        step = (g - target) / slope
        if step <= abs(u) * 1e-15:  # at the root (to rounding), or past it by rounding
            break
        u -= step
    return float(1.0 / np.sqrt(u))


def normalize(q: Any, k: Any, translate: bool = True, scale: bool = True) -> tuple[Any, Any]:
    """Jointly normalised ``(q2, k2)`` of one head (float32, same array library as the input)."""
    q2, k2, _ = normalize_with_info(q, k, translate=translate, scale=scale)
    return q2, k2


def normalize_with_info(
    q: Any, k: Any, translate: bool = True, scale: bool = True
) -> tuple[Any, Any, JointNormalization]:
    """:func:`normalize`, also returning the transform that was applied (one chunk of :func:`fit_normalization`)."""
    if q.ndim != 2 or q.shape != k.shape or q.shape[0] == 0:
        raise ValueError(f"queries and keys must be non-empty arrays of one shape, not {q.shape} and {k.shape}")
    info = fit_normalization(lambda: [(q, k)], translate=translate, scale=scale)
    q2, k2 = info.apply(q, k)
    return q2, k2, info
