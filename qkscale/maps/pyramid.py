"""A raster pyramid over spatially ordered points: per level, the occupied cells and what they hold.

Level 0 holds the base cells, level ``l + 1`` merges 2 x 2 cells of level ``l``. Each level is a
table of occupied cells only (row-major ``keys``, increasing) with, per cell:

- ``kind``: the number of queries and of keys (2 channels);
- a counted category ``c`` with ``n`` values: ``2 n`` channels, ``kind * n + value``;
- a summed number ``s``: its sum over the cell's queries and over its keys (2 channels, float64).

So a zoomed-out view of queries, keys or both, coloured by a category or by the mean of a number,
reads a window of one level instead of every point. Memory is set by the grid, not the points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qkscale.maps.grid import Grid, Window, ranges
from qkscale.maps.order import release_pages

PYRAMID_CHUNK = 1 << 20  # ordered points counted at once
Level = dict[str, np.ndarray]  # "keys" and one table per channel group


def merge_cells(level: Level) -> Level:
    """Cells with equal keys summed: ``keys`` increasing (repeats allowed)."""
    keys = level["keys"]
    if not len(keys):
        return level
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return {
        name: keys[starts] if name == "keys" else np.add.reduceat(table, starts, axis=0)
        for name, table in level.items()
    }


def _chunk_level(
    grid: Grid, columns: dict[str, np.ndarray], part: slice, counted: dict[str, int], summed: tuple[str, ...]
) -> Level:
    kind = np.asarray(columns["kind"][part]).astype(np.int64)
    cells, index = np.unique(grid.keys(columns["x"][part], columns["y"][part]), return_inverse=True)
    n = len(cells)
    level: Level = {"keys": cells}
    for name, n_values in {"kind": 1, **counted}.items():
        channel = kind if name == "kind" else kind * n_values + np.asarray(columns[name][part]).astype(np.int64)
        width = 2 * n_values
        level[name] = np.bincount(index * width + channel, minlength=n * width).reshape(n, width).astype(np.uint32)
    for name in summed:
        values = np.asarray(columns[name][part], dtype=np.float64)
        level[name] = np.bincount(index * 2 + kind, weights=values, minlength=n * 2).reshape(n, 2)
    return level


def base_level(
    grid: Grid,
    columns: dict[str, np.ndarray],
    counted: dict[str, int],
    summed: tuple[str, ...],
    chunk: int = PYRAMID_CHUNK,
) -> Level:
    """Occupied base cells and their tables, from points already in cell order."""
    parts = []
    for start in range(0, len(columns["x"]), chunk):
        parts.append(_chunk_level(grid, columns, slice(start, start + chunk), counted, summed))
        release_pages(*(columns[name] for name in ("x", "y", "kind", *counted, *summed)))
    return merge_cells({name: np.concatenate([p[name] for p in parts]) for name in parts[0]})


def coarser(level: Level, side: int) -> Level:
    """The next level of a level whose grid is ``side`` cells a side."""
    j, i = np.divmod(level["keys"], side)
    merged = (j // 2) * (side // 2) + i // 2
    order = np.argsort(merged, kind="stable")
    return merge_cells({name: merged[order] if name == "keys" else table[order] for name, table in level.items()})


def _narrowed(table: np.ndarray) -> np.ndarray:
    """Counts in the narrowest unsigned type that holds them (a base cell rarely holds 256 points)."""
    if table.dtype.kind != "u" or not table.size:
        return table
    largest = int(table.max())
    return table.astype(next(t for t in (np.uint8, np.uint16, np.uint32) if largest <= np.iinfo(t).max))


class Pyramid:
    """Every level of one head's tables; :meth:`window` reads one view's cells."""

    def __init__(self, grid: Grid, levels: list[Level]):
        self.grid, self.levels = grid, levels

    @classmethod
    def build(
        cls,
        grid: Grid,
        columns: dict[str, np.ndarray],
        counted: dict[str, int] | None = None,
        summed: tuple[str, ...] = (),
    ) -> Pyramid:
        """From ordered ``columns`` (x, y, kind, and the ``counted`` categories and ``summed`` numbers)."""
        levels = [base_level(grid, columns, counted or {}, summed)]
        for level in range(1, grid.levels):
            levels.append(coarser(levels[-1], grid.size >> (level - 1)))
        return cls(grid, levels)

    @property
    def tables(self) -> list[str]:
        return [name for name in self.levels[0] if name != "keys"]

    def save(self, folder: Path) -> None:
        """Write every level into ``folder`` (a map's temp folder, renamed into place with the rest)."""
        for number, level in enumerate(self.levels):
            for name, table in level.items():
                np.save(folder / f"pyramid-{number:02d}-{name}.npy", _narrowed(table) if name != "keys" else table)

    @classmethod
    def load(cls, folder: Path, grid: Grid) -> Pyramid:
        """The pyramid saved in ``folder``, memory-mapped."""
        names = [path.stem.split("-", 2)[2] for path in sorted(folder.glob("pyramid-00-*.npy"))]
        levels = [
            {name: np.load(folder / f"pyramid-{number:02d}-{name}.npy", mmap_mode="r") for name in names}
            for number in range(grid.levels)
        ]
        return cls(grid, levels)

    def window(self, window: Window, table: str = "kind") -> np.ndarray:
        """``[height, width, channels]`` of ``table`` over the window's cells (row 0 at the lowest y)."""
        level = self.levels[window.level]
        keys, values = level["keys"], level[table]
        side = self.grid.size >> window.level
        rows = np.arange(window.j0, window.j1)
        first = np.searchsorted(keys, rows * side + window.i0)
        last = np.searchsorted(keys, rows * side + window.i1)
        dtype = np.uint32 if values.dtype.kind == "u" else values.dtype
        out = np.zeros((window.height, window.width, values.shape[1]), dtype)
        picked = ranges(first, last)
        j, i = np.divmod(keys[picked], side)
        out[j - window.j0, i - window.i0] = values[picked]
        return out
