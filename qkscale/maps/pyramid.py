"""A raster pyramid over spatially ordered points: per level, the occupied cells and their counts.

Level 0 holds the base cells, level ``l + 1`` merges 2 x 2 cells of level ``l``. Each level is a
table of occupied cells only (row-major keys, increasing) with one count per channel; a channel is
a (kind, category) pair, so a zoomed-out view of queries, keys or both, coloured by any category,
reads a window of one level instead of every point. Memory is set by the grid, not the points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qkscale.maps.grid import Grid, Window, ranges

PYRAMID_CHUNK = 1 << 20  # ordered points counted at once


def merge_cells(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cells with equal keys summed: ``keys`` increasing (repeats allowed), ``counts`` ``[n, channels]``."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts, axis=0) if len(keys) else counts


def base_level(
    grid: Grid, x: np.ndarray, y: np.ndarray, channel: np.ndarray, n_channels: int, chunk: int = PYRAMID_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Occupied base cells and their counts per channel, from points already in cell order."""
    parts_keys, parts_counts = [], []
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        keys = grid.keys(x[part], y[part])
        cells, index = np.unique(keys, return_inverse=True)
        counts = np.bincount(index * n_channels + channel[part], minlength=len(cells) * n_channels)
        parts_keys.append(cells)
        parts_counts.append(counts.reshape(len(cells), n_channels).astype(np.uint32))
    return merge_cells(np.concatenate(parts_keys), np.concatenate(parts_counts))


def coarser(keys: np.ndarray, counts: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The next level of a level whose grid is ``side`` cells a side."""
    j, i = np.divmod(keys, side)
    merged = (j // 2) * (side // 2) + i // 2
    order = np.argsort(merged, kind="stable")
    return merge_cells(merged[order], counts[order])


class Pyramid:
    """Every level of one head's counts; :meth:`window` reads one view's cells."""

    def __init__(self, grid: Grid, levels: list[tuple[np.ndarray, np.ndarray]]):
        self.grid, self.levels = grid, levels

    @classmethod
    def build(cls, grid: Grid, x: np.ndarray, y: np.ndarray, channel: np.ndarray, n_channels: int) -> Pyramid:
        levels = [base_level(grid, x, y, channel, n_channels)]
        for level in range(1, grid.levels):
            levels.append(coarser(*levels[-1], grid.size >> (level - 1)))
        return cls(grid, levels)

    def save(self, folder: Path) -> None:
        """Write every level into ``folder`` (a map's temp folder, renamed into place with the rest)."""
        for level, (keys, counts) in enumerate(self.levels):
            np.save(folder / f"pyramid-{level:02d}-keys.npy", keys)
            np.save(folder / f"pyramid-{level:02d}-counts.npy", counts)

    @classmethod
    def load(cls, folder: Path, grid: Grid) -> Pyramid:
        """The pyramid saved in ``folder``, memory-mapped."""
        levels = [
            tuple(np.load(folder / f"pyramid-{level:02d}-{part}.npy", mmap_mode="r") for part in ("keys", "counts"))
            for level in range(grid.levels)
        ]
        return cls(grid, levels)

    def points_in(self, window: Window) -> int:
        """How many points the window's cells hold."""
        return int(self.window(window).sum())

    def window(self, window: Window) -> np.ndarray:
        """``[height, width, channels]`` counts of the window's cells (row 0 at the lowest y)."""
        keys, counts = self.levels[window.level]
        side = self.grid.size >> window.level
        rows = np.arange(window.j0, window.j1)
        first = np.searchsorted(keys, rows * side + window.i0)
        last = np.searchsorted(keys, rows * side + window.i1)
        out = np.zeros((window.height, window.width, counts.shape[1]), np.uint32)
        picked = ranges(first, last)
        j, i = np.divmod(keys[picked], side)
        out[j - window.j0, i - window.i0] = counts[picked]
        return out
