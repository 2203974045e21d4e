"""Point maps: the dyadic grid bins points exactly as Datashader does over a snapped window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qkscale.maps.grid import Grid

ds = pytest.importorskip("datashader")


def _points(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 3, 20_000), rng.uniform(-7, 11, 5_000)]).astype(np.float32)
    y = np.concatenate([rng.normal(1, 2, 20_000), rng.uniform(-5, 9, 5_000)]).astype(np.float32)
    return x, y


def _with_near_edge_points(grid: Grid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds the float32 neighbours of base-cell edges: the points most likely to be binned differently."""
    edges_x = np.array([grid.edge(i, 0, 0) for i in range(1, grid.size)])
    edges_y = np.array([grid.edge(j, 0, 1) for j in range(1, grid.size)])
    near_x = np.concatenate([np.nextafter(edges_x.astype(np.float32), np.float32(s)) for s in (-np.inf, np.inf)])
    near_y = np.concatenate([np.nextafter(edges_y.astype(np.float32), np.float32(s)) for s in (-np.inf, np.inf)])
    near_x = near_x[(near_x > x.min()) & (near_x < x.max())]
    near_y = near_y[(near_y > y.min()) & (near_y < y.max())]
    rng = np.random.default_rng(1)
    extra_x = np.concatenate([near_x, rng.choice(x, len(near_y))])
    extra_y = np.concatenate([rng.choice(y, len(near_x)), near_y])
    return np.concatenate([x, extra_x]).astype(np.float32), np.concatenate([y, extra_y]).astype(np.float32)


def test_no_float32_lies_on_an_edge():
    x, y = _points()
    grid = Grid.covering(x, y, 256)
    for level in range(grid.levels):
        for index in range(0, (grid.size >> level) + 1):
            for axis in (0, 1):
                edge = grid.edge(index, level, axis)
                assert float(np.float32(edge)) != edge


@pytest.mark.parametrize("level", [0, 1, 3, 5])
def test_cells_of_a_snapped_window_equal_a_datashader_aggregate(level):
    x, y = _points()
    grid = Grid.covering(x, y, 256)
    x, y = _with_near_edge_points(grid, x, y)
    assert grid.cells(x, y)[0].min() >= 1 and grid.cells(x, y)[0].max() < grid.size - 1
    side = grid.cell * 2**level
    view = ((-2.3, -2.3 + 300 * side), (-1.7, -1.7 + 200 * side))  # about 300 cells of this level across
    window = grid.snap(*view, pixels=300)
    assert window.level == level
    i, j = grid.cells(x, y, level)
    inside = (i >= window.i0) & (i < window.i1) & (j >= window.j0) & (j < window.j1)
    ours = np.zeros((window.height, window.width), np.int64)
    np.add.at(ours, (j[inside] - window.j0, i[inside] - window.i0), 1)
    canvas = ds.Canvas(window.width, window.height, x_range=window.x_range, y_range=window.y_range)
    theirs = canvas.points(pd.DataFrame({"x": x, "y": y}), "x", "y", agg=ds.count()).to_numpy()
    assert ours.sum() > 1000
    np.testing.assert_array_equal(ours, theirs)


@pytest.fixture
def projection_file(tmp_path):
    """A 2D projection of 12,500 tokens written as the projection stage writes it (row groups of 3,000)."""
    from qkscale.store.projections import ProjectionWriter

    x, y = _points(2)
    n = len(x) // 2
    tokens = np.r_[np.arange(n), np.arange(n)]
    kinds = np.r_[np.zeros(n, np.int8), np.ones(n, np.int8)]
    writer = ProjectionWriter(tmp_path / "projection.parquet", 2)
    for start in range(0, 2 * n, 3000):
        part = slice(start, start + 3000)
        writer.write(tokens[part], kinds[part], np.column_stack([x[part], y[part]]))
    writer.commit({"method": "test"})
    return tmp_path / "projection.parquet", pd.DataFrame({"token": tokens, "kind": kinds, "x": x, "y": y})


def test_ordered_points_are_the_projection_sorted_by_cell(projection_file, tmp_path):
    from qkscale.maps.order import OrderedPoints, order_points

    source, frame = projection_file
    (tmp_path / "map").mkdir()
    grid = order_points(source, tmp_path / "map", size=64, chunk=7_000)
    ordered = OrderedPoints(tmp_path / "map")
    columns = pd.DataFrame({name: np.asarray(values) for name, values in ordered.columns.items()})
    assert len(ordered) == len(frame)
    keys = grid.keys(columns["x"].to_numpy(), columns["y"].to_numpy())
    assert np.all(np.diff(keys) >= 0)
    np.testing.assert_array_equal(np.asarray(ordered.cells[keys]) <= np.arange(len(keys)), True)
    by_point = ["kind", "token"]
    expected = frame.astype({"kind": np.uint8}).sort_values(by_point).reset_index(drop=True)
    got = columns[list(expected.columns)].sort_values(by_point).reset_index(drop=True)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("level", [0, 2, 4])
def test_points_of_a_window_render_like_all_points(projection_file, tmp_path, level):
    from qkscale.maps.order import OrderedPoints, order_points

    source, frame = projection_file
    (tmp_path / "map").mkdir()
    grid = order_points(source, tmp_path / "map", size=64, chunk=5_000)
    ordered = OrderedPoints(tmp_path / "map")
    side = grid.cell * 2**level
    window = grid.snap((-1.0, -1.0 + 9 * side), (0.5, 0.5 + 7 * side), pixels=9)
    rows = ordered.rows_in(window)
    i, j = grid.cells(frame["x"].to_numpy(), frame["y"].to_numpy(), window.level)
    inside = (i >= window.i0) & (i < window.i1) & (j >= window.j0) & (j < window.j1)
    assert len(rows) == inside.sum() > 0 and np.all(np.diff(rows) > 0)
    subset = pd.DataFrame({axis: np.asarray(ordered.columns[axis])[rows] for axis in ("x", "y")})
    for width in (window.width, 37):  # one pixel per cell, and any other canvas over the same range
        canvas = ds.Canvas(width, width, x_range=window.x_range, y_range=window.y_range)
        np.testing.assert_array_equal(
            canvas.points(subset, "x", "y", agg=ds.count()).to_numpy(),
            canvas.points(frame, "x", "y", agg=ds.count()).to_numpy(),
        )


@pytest.mark.parametrize("level", [0, 1, 3, 6])
def test_pyramid_windows_equal_a_datashader_aggregate_per_kind(projection_file, tmp_path, level):
    from qkscale.maps.order import OrderedPoints, order_points
    from qkscale.maps.pyramid import Pyramid

    source, frame = projection_file
    (tmp_path / "map").mkdir()
    grid = order_points(source, tmp_path / "map", size=64, chunk=6_000)
    ordered = OrderedPoints(tmp_path / "map")
    Pyramid.build(grid, ordered.columns).save(tmp_path)
    pyramid = Pyramid.load(tmp_path, grid)
    assert len(pyramid.levels[-1]["keys"]) == 1 and pyramid.levels[-1]["kind"].sum() == len(frame)
    side = grid.cell * 2**level
    window = grid.snap((-3.1, -3.1 + 11 * side), (-0.4, -0.4 + 11 * side), pixels=11)
    assert window.level == level
    ours = pyramid.window(window)
    canvas = ds.Canvas(window.width, window.height, x_range=window.x_range, y_range=window.y_range)
    labelled = frame.assign(kind=pd.Categorical.from_codes(frame["kind"], ["q", "k"]))
    theirs = canvas.points(labelled, "x", "y", agg=ds.count_cat("kind")).to_numpy()
    assert ours.sum() > 0
    np.testing.assert_array_equal(ours, theirs)
