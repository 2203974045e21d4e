"""Index selections such as ``0,2-4`` for ``--layers`` (and later ``--heads``)."""

from __future__ import annotations

from qkscale.errors import OptionError


def parse_selection(spec: str | list[int] | None, size: int, what: str = "layers") -> list[int]:
    """Sorted unique indices in ``range(size)`` from ``"0,2-4"``, a list, or None (all)."""
    if spec is None or spec == "" or spec == "all":
        return list(range(size))
    if isinstance(spec, str):
        chosen: set[int] = set()
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            try:
                lo, hi = int(first), int(last or first)
            except ValueError:
                raise OptionError(f"--{what} '{spec}' is not a list like 0,2-4") from None
            chosen.update(range(lo, hi + 1))
    else:
        chosen = {int(i) for i in spec}
    outside = sorted(i for i in chosen if not 0 <= i < size)
    if outside or not chosen:
        raise OptionError(f"--{what} {spec} is out of range: the model has {what} 0-{size - 1}")
    return sorted(chosen)


def format_selection(indices: list[int]) -> str:
    """The inverse of :func:`parse_selection`: ``[0, 2, 3, 4]`` -> ``"0,2-4"``."""
    parts, i = [], 0
    while i < len(indices):
        j = i
        while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
            j += 1
        parts.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
        i = j + 1
    return ",".join(parts)
