"""Finiteness of stored vectors: one vectorised reduction per array, the offender located only if there is one.

The stages that read vectors (projection, metrics) call :func:`check_finite` on the chunks they
read anyway; ``qkscale verify`` can use the same two functions over a whole store.
"""

from __future__ import annotations

import numpy as np

from qkscale.errors import NonFiniteError


def first_non_finite(values: np.ndarray) -> int | None:
    """Index (along axis 0) of the first row of ``values`` holding a NaN or an infinity; None if all are finite.

    One float64 sum decides (finite float16/float32 values cannot overflow it; NaN and infinities
    carry through it); only then are the rows searched.
    """
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: non-finite all the same
        if np.isfinite(values.sum(dtype=np.float64)):
            return None
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    return int(np.argmax(bad))


def check_finite(values: np.ndarray, what: str, first_row: int = 0, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if ``values`` holds a NaN or an infinity.

    ``values`` are the rows ``first_row, first_row + 1, ...`` of the store (token ids); the
    message reads ``{what} holds non-finite vectors (first at token {id}){hint}``.
    """
    row = first_non_finite(values)
    if row is not None:
        raise NonFiniteError(f"{what} holds non-finite vectors (first at token {first_row + row}){hint}")


def verify_hint(store_path: object) -> str:
    """The hint that projection and metrics give after the message: which command finds every damaged head."""
    return f"; run `qkscale verify {store_path}`"
