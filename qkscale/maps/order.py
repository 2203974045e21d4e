"""A projection's points in spatial order: memory-mapped columns sorted by grid cell, and where each cell starts.

```
STORE/maps/umap-2d/L000-H003/   grid.json, cells.npy (int64 start of every base cell, row-major, + end),
                                x.npy, y.npy (float32), token.npy (uint32, int64 past 2^32 tokens),
                                kind.npy (uint8: 0 query, 1 key), and the columns of
                                :data:`qkscale.maps.attributes.ATTRIBUTES` (21 bytes a point in all)
```
Within a cell, its queries come before its keys. Written by a counting sort in two streamed passes
over the projection's row groups (a histogram of cells, then every chunk scattered to its cells'
slots), so memory is set by the chunk and the grid, never by the number of points.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qkscale.maps.grid import Grid, Window, ranges
from qkscale.store.projections import key_flags

GRID_SIZE = 1024  # base cells a side
CHUNK_POINTS = 1 << 20  # points read and scattered at once
POINT_COLUMNS = {"x": np.float32, "y": np.float32, "token": np.uint32, "kind": np.uint8}
Attributes = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (token, kind) -> columns


def column_types(n_points: int, attributes: dict[str, type]) -> dict[str, type]:
    """Every column's dtype: token ids in 32 bits while they fit."""
    token = np.uint32 if n_points < 2**32 else np.int64
    return {**POINT_COLUMNS, "token": token, **attributes}


def projection_extent(file: pq.ParquetFile) -> tuple[np.ndarray, np.ndarray]:
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


def release_pages(*arrays: np.ndarray) -> None:
    """Write memory-mapped arrays' dirty pages and drop their pages from this process.

    The pages stay in the page cache (the next read is a minor fault), so a pass over a mapped
    file keeps this process's resident set at the chunk, not the file. Arrays in memory are left.
    """
    for array in arrays:
        mapped = getattr(array, "_mmap", None)  # numpy keeps the mmap object there
        if mapped is None:
            continue
        if array.flags.writeable:
            array.flush()
        mapped.madvise(mmap.MADV_DONTNEED)


def order_points(
    source: Path,
    folder: Path,
    size: int = GRID_SIZE,
    chunk: int = CHUNK_POINTS,
    attributes: Attributes | None = None,
    attribute_types: dict[str, type] | None = None,
) -> Grid:
    """Write the spatially ordered columns of the 2D projection at ``source`` into the (new) ``folder``.

    ``attributes(token, kind)`` gives each chunk's extra columns (dtypes ``attribute_types``).
    """
    file = pq.ParquetFile(source)
    n = file.metadata.num_rows
    if n == 0:
        raise ValueError(f"projection {source} holds no points")
    low, high = projection_extent(file)
    grid = Grid.covering(np.array([low[0], high[0]]), np.array([low[1], high[1]]), size)
    slots = 2 * size * size  # (cell, kind): a cell's queries, then its keys
    starts = np.zeros(slots + 1, np.int64)
    for values in _chunks(file, chunk, None):
        starts[1:] += np.bincount(_slots(grid, values), minlength=slots)
    np.cumsum(starts, out=starts)
    cursor = starts[:-1].copy()
    types = column_types(n, attribute_types or {})  # token ids are below the number of points
    columns = {
        name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(n,))
        for name, dtype in types.items()
    }
    for values in _chunks(file, chunk, attributes):
        keys = _slots(grid, values)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        rank = np.arange(len(keys)) - np.searchsorted(sorted_keys, sorted_keys, side="left")
        positions = cursor[sorted_keys] + rank
        cursor += np.bincount(keys, minlength=slots)
        for name, column in columns.items():
            column[positions] = values[name][order]
            release_pages(column)
    for column in columns.values():
        column.flush()
    del columns
    np.save(folder / "cells.npy", starts[::2])
    (folder / "grid.json").write_text(json.dumps(asdict(grid)))
    return grid


def _chunks(file: pq.ParquetFile, chunk: int, attributes: Attributes | None):
    """The projection's points, ``chunk`` at a time: x, y, token, kind (0/1) and the extra attributes."""
    for batch in file.iter_batches(chunk, columns=["token", "kind", "x", "y"]):
        values = {
            "x": batch.column("x").to_numpy(),
            "y": batch.column("y").to_numpy(),
            "token": batch.column("token").to_numpy(),
            "kind": key_flags(batch.column("kind")),
        }
        if attributes is not None:
            values |= attributes(values["token"], values["kind"])
        yield values


def _slots(grid: Grid, values: dict[str, np.ndarray]) -> np.ndarray:
    return 2 * grid.keys(values["x"], values["y"]) + values["kind"]


class OrderedPoints:
    """The spatially ordered columns of one head, memory-mapped: only the rows a view reads are touched."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.grid = Grid(**json.loads((folder / "grid.json").read_text()))
        self.cells = np.load(folder / "cells.npy", mmap_mode="r")
        self.columns = {path.stem: np.load(path, mmap_mode="r") for path in folder.glob("*.npy") if _is_column(path)}

    def __len__(self) -> int:
        return int(self.cells[-1])

    def _bounds(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """First and end row of the window's points on each base row it covers."""
        size, level = self.grid.size, window.level
        i0, i1 = window.i0 << level, min(window.i1 << level, size)
        rows = np.arange(window.j0 << level, min(window.j1 << level, size))
        return np.asarray(self.cells[rows * size + i0]), np.asarray(self.cells[rows * size + i1])

    def rows_in(self, window: Window) -> np.ndarray:
        """The rows of every point whose cell lies in ``window`` (increasing)."""
        return ranges(*self._bounds(window))

    def count_in(self, window: Window) -> int:
        """How many points the window's cells hold."""
        first, last = self._bounds(window)
        return int((last - first).sum())


def _is_column(path: Path) -> bool:
    return path.stem != "cells" and not path.stem.startswith("pyramid")
