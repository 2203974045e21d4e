"""The dyadic grid of a point map: square cells of a power-of-two size, offset so that no float32 lies on an edge.

A view snapped to the cells of a level and drawn one pixel per cell bins every point exactly as a
plain Datashader canvas over the same range does: Datashader maps ``x`` to ``int(x * sx + tx)``
with ``sx`` a power of two here, so the arithmetic is exact but for points on an edge, and edges
``cell * (n + PHI)`` need 29 significant bits, more than a float32 has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PHI = 0x15555555 / 2**30  # the grid's offset in cells: 30 bits, about 1/3


def ranges(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The indices of every range ``[first[r], last[r])``, one after another."""
    lengths = np.asarray(last) - np.asarray(first)
    return np.repeat(first - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))


@dataclass(frozen=True)
class Grid:
    """``size`` x ``size`` base cells of side ``cell`` from ``(x0, y0)``; level ``l`` merges 2^l x 2^l of them."""

    x0: float
    y0: float
    cell: float  # a power of two
    size: int  # a power of two

    @classmethod
    def covering(cls, x: np.ndarray, y: np.ndarray, size: int) -> Grid:
        """The grid of ``size`` cells a side whose inside holds every point, a cell of margin around them."""
        if size < 4 or size & (size - 1):
            raise ValueError(f"grid size {size} is not a power of two >= 4")
        low = (float(np.min(x)), float(np.min(y)))
        span = max(float(np.max(x)) - low[0], float(np.max(y)) - low[1], 2.0**-60)
        cell = 2.0 ** math.ceil(math.log2(span / (size - 3)))
        x0, y0 = ((math.floor(v / cell) - 1 + PHI) * cell for v in low)
        return cls(x0, y0, cell, size)

    @property
    def levels(self) -> int:
        """Levels 0 (base cells) to ``levels - 1`` (one cell: the whole grid)."""
        return int(math.log2(self.size)) + 1

    def cells(self, x: np.ndarray, y: np.ndarray, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Column and row of each point's cell at ``level`` (int64)."""
        side = self.cell * 2**level
        i = np.floor((np.asarray(x, np.float64) - self.x0) / side).astype(np.int64)
        j = np.floor((np.asarray(y, np.float64) - self.y0) / side).astype(np.int64)
        return i, j

    def keys(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each point's base cell in row-major order: ``row * size + column``."""
        i, j = self.cells(x, y)
        return j * self.size + i

    def edge(self, index: int, level: int, axis: int) -> float:
        """Coordinate of edge ``index`` of ``level`` along ``axis`` (0: x, 1: y)."""
        return (self.x0, self.y0)[axis] + index * self.cell * 2**level

    def snap(self, x_range: tuple[float, float], y_range: tuple[float, float], pixels: int) -> Window:
        """The cell-aligned window of the finest level whose cells are at least a pixel wide for ``x_range``."""
        pixel = max(x_range[1] - x_range[0], y_range[1] - y_range[0]) / max(pixels, 1)
        level = min(max(0, math.ceil(math.log2(max(pixel, 1e-300) / self.cell))), self.levels - 1)
        side = self.cell * 2**level
        n = self.size >> level

        def cover(low: float, high: float, origin: float) -> tuple[int, int]:
            first = min(max(math.floor((low - origin) / side), 0), n - 1)
            return first, min(max(math.ceil((high - origin) / side), first + 1), n)

        (i0, i1), (j0, j1) = cover(*x_range, self.x0), cover(*y_range, self.y0)
        return Window(self, level, i0, i1, j0, j1)


@dataclass(frozen=True)
class Window:
    """Cells ``[i0, i1) x [j0, j1)`` of one level: a view drawn one pixel per cell."""

    grid: Grid
    level: int
    i0: int
    i1: int
    j0: int
    j1: int

    @property
    def width(self) -> int:
        return self.i1 - self.i0

    @property
    def height(self) -> int:
        return self.j1 - self.j0

    @property
    def x_range(self) -> tuple[float, float]:
        return self.grid.edge(self.i0, self.level, 0), self.grid.edge(self.i1, self.level, 0)

    @property
    def y_range(self) -> tuple[float, float]:
        return self.grid.edge(self.j0, self.level, 1), self.grid.edge(self.j1, self.level, 1)
