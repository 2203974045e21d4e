"""A projection's points in spatial order: memory-mapped columns sorted by grid cell, and where each cell starts.

```
STORE/maps/umap-2d/L000-H003/   grid.json, cells.npy (int64 start of every base cell, row-major, + end),
                                x.npy, y.npy (float32), token.npy (int64), kind.npy (uint8: 0 query, 1 key)
```
Written by a counting sort in two streamed passes over the projection's row groups (a histogram of
cells, then every chunk scattered to its cells' slots), so memory is set by the chunk and the grid,
never by the number of points.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qkscale.maps.grid import Grid, Window, ranges

GRID_SIZE = 1024  # base cells a side
CHUNK_POINTS = 1 << 20  # points read and scattered at once
COLUMNS = {"x": np.float32, "y": np.float32, "token": np.int64, "kind": np.uint8}


def _extent(file: pq.ParquetFile) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest x and y, from the row groups' statistics where they have them."""
    names = file.schema_arrow.names
    low, high = [], []
    for group in range(file.metadata.num_row_groups):
        stats = [file.metadata.row_group(group).column(names.index(axis)).statistics for axis in ("x", "y")]
        if not all(s is not None and s.has_min_max for s in stats):
            table = file.read_row_group(group, columns=["x", "y"])
            stats = [_MinMax(table[axis].to_numpy()) for axis in ("x", "y")]
        low.append([s.min for s in stats])
        high.append([s.max for s in stats])
    return np.min(low, axis=0), np.max(high, axis=0)


class _MinMax:
    def __init__(self, values: np.ndarray):
        self.min, self.max = float(values.min()), float(values.max())


def _release(column: np.memmap) -> None:
    """Write a mapped column's dirty pages and drop them from this process (they stay in the page cache)."""
    column.flush()
    column._mmap.madvise(mmap.MADV_DONTNEED)  # noqa: SLF001 (numpy keeps the mmap object there)


def order_points(source: Path, folder: Path, size: int = GRID_SIZE, chunk: int = CHUNK_POINTS) -> Grid:
    """Write the spatially ordered columns of the 2D projection at ``source`` into the (new) ``folder``."""
    file = pq.ParquetFile(source)
    n = file.metadata.num_rows
    if n == 0:
        raise ValueError(f"projection {source} holds no points")
    low, high = _extent(file)
    grid = Grid.covering(np.array([low[0], high[0]]), np.array([low[1], high[1]]), size)
    starts = np.zeros(size * size + 1, np.int64)
    for batch in file.iter_batches(chunk, columns=["x", "y"]):
        keys = grid.keys(batch.column("x").to_numpy(), batch.column("y").to_numpy())
        starts[1:] += np.bincount(keys, minlength=size * size)
    np.cumsum(starts, out=starts)
    cursor = starts[:-1].copy()
    columns = {
        name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(n,))
        for name, dtype in COLUMNS.items()
    }
    for batch in file.iter_batches(chunk, columns=["token", "kind", "x", "y"]):
        kind = batch.column("kind")
        values = {
            "x": batch.column("x").to_numpy(),
            "y": batch.column("y").to_numpy(),
            "token": batch.column("token").to_numpy(),
            "kind": (np.asarray(kind.dictionary.to_pylist())[kind.indices.to_numpy()] == "k").astype(np.uint8),
        }
        keys = grid.keys(values["x"], values["y"])
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        rank = np.arange(len(keys)) - np.searchsorted(sorted_keys, sorted_keys, side="left")
        positions = cursor[sorted_keys] + rank
        cursor += np.bincount(keys, minlength=size * size)
        for name, column in columns.items():
            column[positions] = values[name][order]
            _release(column)
    for column in columns.values():
        column.flush()
    del columns
    np.save(folder / "cells.npy", starts)
    (folder / "grid.json").write_text(json.dumps(asdict(grid)))
    return grid


class OrderedPoints:
    """The spatially ordered columns of one head, memory-mapped: only the rows a view reads are touched."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.grid = Grid(**json.loads((folder / "grid.json").read_text()))
        self.cells = np.load(folder / "cells.npy", mmap_mode="r")
        self.columns = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in COLUMNS}

    def __len__(self) -> int:
        return int(self.cells[-1])

    def rows_in(self, window: Window) -> np.ndarray:
        """The rows of every point whose cell lies in ``window`` (increasing)."""
        size, level = self.grid.size, window.level
        i0, i1 = window.i0 << level, min(window.i1 << level, size)
        rows = np.arange(window.j0 << level, min(window.j1 << level, size))
        return ranges(np.asarray(self.cells[rows * size + i0]), np.asarray(self.cells[rows * size + i1]))
