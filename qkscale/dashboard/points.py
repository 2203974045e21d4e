"""One head's projected points as the dashboard reads them: a window at a time, never all at once.

A 2D head is drawn from its point map (``STORE/maps/``, written by `project`): the pyramid for
zoomed-out views, the spatially ordered columns for the points of a zoomed-in window. Single
points (the clicked token, its links, search matches, a 3D sample) are read from the projection
file by row: the row of a token's query is its id, the row of its key ``n_tokens + id``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qkscale.errors import StoreError
from qkscale.maps.grid import Grid, Window
from qkscale.maps.order import OrderedPoints, projection_extent, release_pages
from qkscale.maps.pyramid import Pyramid
from qkscale.maps.thumbnail import padded
from qkscale.store.files import reading

KINDS = ("q", "k")
MARGIN = 0.03  # of the extent, around the points of a head
MAX_3D_POINTS = 100_000


class ProjectionRows:
    """A projection file read by row: only the row groups holding the rows asked for."""

    def __init__(self, path: Path):
        self.path = path
        self.file = pq.ParquetFile(path)
        self._reading = threading.Lock()  # one file reader, shared by every session's threads
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.metadata.num_row_groups)]
        self.starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self.axes = [axis for axis in ("x", "y", "z") if axis in self.file.schema_arrow.names]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, rows: np.ndarray, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """``columns`` (default: the axes) at ``rows``, in the order of ``rows``."""
        columns = columns or self.axes
        rows = np.asarray(rows, np.int64)
        out = {name: np.empty(len(rows), np.int64 if name == "token" else np.float32) for name in columns}
        group_of = np.searchsorted(self.starts, rows, side="right") - 1
        for group in np.unique(group_of).tolist():
            mine = np.flatnonzero(group_of == group)
            table = self._group(group, tuple(columns))
            for name in columns:
                out[name][mine] = table[name][rows[mine] - self.starts[group]]
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 (clicks and links read the same group again and again)
    def _group(self, group: int, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        with self._reading:
            table = self.file.read_row_group(group, columns=list(columns))
        return {name: table.column(name).to_numpy() for name in columns}


@dataclass(frozen=True)
class PointMap:
    """A 2D head's ordered points and pyramid (memory-mapped)."""

    points: OrderedPoints
    pyramid: Pyramid

    @classmethod
    def load(cls, folder: Path) -> PointMap:
        if not (folder / "grid.json").is_file():
            raise StoreError(f"{folder} is missing: run `qkscale project` again to write this head's point map")
        points = OrderedPoints(folder)
        return cls(points, Pyramid.load(folder, points.grid))

    @property
    def grid(self) -> Grid:
        return self.points.grid

    def release(self) -> None:
        """Drop the map's pages from this process after a redraw (see :func:`release_pages`)."""
        tables = [table for level in self.pyramid.levels for table in level.values()]
        release_pages(self.points.cells, *self.points.columns.values(), *tables)

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.points.columns[name][rows])

    def point(self, row: int) -> tuple[int, str]:
        """The token and kind ('q'/'k') of the point at ordered row ``row``."""
        return int(self.points.columns["token"][row]), KINDS[int(self.points.columns["kind"][row])]

    def representatives(self, window: Window, show: tuple[str, ...]) -> np.ndarray:
        """``[height, width]`` ordered row of one shown point in each cell of ``window`` (-1 where none).

        Within a base cell queries come first and keys last, so a cell's first point is its query
        if it has one and its last point its key; a cell of a coarser level is searched one base
        row at a time.
        """
        size, level, cells = self.grid.size, window.level, self.points.cells
        kind = self.points.columns["kind"]
        low = np.arange(window.i0, window.i1) << level
        high = np.minimum(low + (1 << level), size)
        best = np.full((window.height, window.width), -1, np.int64)
        for offset in range(1 << level):
            base_rows = (np.arange(window.j0, window.j1) << level) + offset
            inside = base_rows < size
            if not inside.any():
                break
            base = np.where(inside, base_rows, 0)[:, None] * size
            start, end = np.asarray(cells[base + low]), np.asarray(cells[base + high])
            occupied = (end > start) & inside[:, None]
            candidate = end - 1 if show == ("k",) else start
            ok = occupied.copy()
            if len(show) == 1:
                ok[occupied] = kind[candidate[occupied]] == KINDS.index(show[0])
            fill = ok & (best < 0)
            best[fill] = candidate[fill]
            if (best >= 0).all():
                break
        return best

    def nearest(self, x: float, y: float, show: tuple[str, ...]) -> int | None:
        """The ordered row of the shown point nearest to (x, y), searching ever wider squares of cells."""
        grid = self.grid
        i, j = (int(v[0]) for v in grid.cells(np.array([x]), np.array([y])))
        radius = 2
        while True:
            window = Window(
                grid,
                0,
                max(i - radius, 0),
                min(i + radius + 1, grid.size),
                max(j - radius, 0),
                min(j + radius + 1, grid.size),
            )
            rows = self.points.rows_in(window) if window.width > 0 and window.height > 0 else np.empty(0, np.int64)
            if len(show) == 1 and len(rows):
                rows = rows[self.column("kind", rows) == KINDS.index(show[0])]
            if len(rows):
                distance = (self.column("x", rows) - x) ** 2 + (self.column("y", rows) - y) ** 2
                return int(rows[np.argmin(distance)])
            if radius >= 2 * grid.size:
                return None
            radius *= 4


@dataclass(frozen=True)
class HeadPoints:
    """One head's projection: its file, its map (2D), and the extent of its points."""

    layer: int
    head: int
    method: str
    dims: int
    n_tokens: int
    projection: ProjectionRows
    map: PointMap | None
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    @classmethod
    def load(
        cls, projection: Path, map_folder: Path | None, layer: int, head: int, method: str, dims: int
    ) -> HeadPoints:
        with reading(projection):
            rows = ProjectionRows(projection)
            low, high = projection_extent(rows.file)
        with reading(map_folder or projection):
            point_map = PointMap.load(map_folder) if map_folder is not None else None
        return cls(
            layer,
            head,
            method,
            dims,
            len(rows) // 2,
            rows,
            point_map,
            padded(low[0], high[0], MARGIN),
            padded(low[1], high[1], MARGIN),
        )

    @property
    def n_points(self) -> int:
        return len(self.projection)

    def shown(self, show: tuple[str, ...]) -> int:
        """How many points the kinds in ``show`` are."""
        return self.n_tokens * len(set(show) & set(KINDS))

    def sample(self, show: tuple[str, ...], limit: int = MAX_3D_POINTS, seed: int = 0) -> np.ndarray:
        """At most ``limit`` projection rows of the shown kinds, drawn uniformly (fixed seed: stable), increasing."""
        n = self.n_tokens
        offsets = np.array([KINDS.index(k) * n for k in KINDS if k in show], np.int64)
        total = len(offsets) * n
        rng = np.random.default_rng(seed)
        picked = np.arange(total) if total <= limit else np.sort(rng.choice(total, limit, replace=False))
        return offsets[picked // n] + picked % n

    def row_of(self, token: int, kind: str) -> int:
        """The projection row of token ``token``'s query or key (-1 if out of range)."""
        return token + KINDS.index(kind) * self.n_tokens if 0 <= token < self.n_tokens else -1

    def coordinates(self, tokens: np.ndarray, kind: str) -> dict[str, np.ndarray]:
        """The axes of ``tokens``' queries or keys."""
        tokens = np.asarray(tokens, np.int64)
        return self.projection.read(tokens + KINDS.index(kind) * self.n_tokens)
