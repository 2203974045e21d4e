"""Single-head view: one head's joint embedding, drawn from its point map on every zoom and pan.

Every point counts (no sampling in 2D). A view is snapped to the cells of the pyramid level whose
cells are about a pixel: zoomed out, that level's counts (or sums) are the aggregate, exactly what
Datashader would compute from every point over the snapped range; zoomed in past the base cells,
the points of the window are read from the ordered columns and datashaded. Either way the work is
set by the pixels and the points in view, never by the head. Hover reads one token when the
cursor stops on it. 3D views use a sample of :meth:`HeadPoints.sample`, drawn by Plotly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.dashboard.points import KINDS, HeadPoints, PointMap
from qkscale.maps.attributes import CATEGORIES
from qkscale.maps.grid import Window
from qkscale.maps.thumbnail import KEY_COLOR, QUERY_COLOR

log = logging.getLogger(__name__)
MAX_WINDOW_POINTS = 4_000_000  # zoomed in further than the base cells: datashade the window's points up to this
PLOT_SIZE = 640
HOVER_COLUMNS = ["token", "kind", "doc", "position", "context"]
HOVER = [("token", "token"), ("kind", "kind"), ("document", "doc"), ("position", "position"), ("context", "context")]
_CATEGORY_COLOURS = {
    "token_kind": {
        "special": "#d62728",
        "punctuation": "#9467bd",
        "word": "#2ca02c",
        "subword": "#17becf",
        "patch": "#8c564b",
    },
    # Ten colours cycled over document numbers: neighbouring documents differ.
    "doc_colour": dict(
        zip(
            map(str, range(10)),
            [
                "#1f77b4",
                "#ff7f0e",
                "#2ca02c",
                "#d62728",
                "#9467bd",
                "#8c564b",
                "#e377c2",
                "#7f7f7f",
                "#bcbd22",
                "#17becf",
            ],
            strict=True,
        )
    ),
    "kind": {"q": QUERY_COLOR, "k": KEY_COLOR},
}
CATEGORY_NAMES = {"kind": list(KINDS), **CATEGORIES}


@dataclass(frozen=True)
class Colouring:
    """How points are coloured: by a category (a colour each) or by the mean of a number per pixel."""

    label: str
    column: str
    categorical: bool
    cmap: str = "viridis"

    @property
    def colours(self) -> dict:
        return _CATEGORY_COLOURS.get(self.column, {})

    def legend(self) -> str:
        """An HTML legend line for the colouring."""
        if not self.categorical:
            return f"<b>{self.label}</b>: mean per pixel, low (dark purple) to high (yellow)"
        if self.column == "doc_colour":
            return "<b>document</b>: ten colours cycled over document numbers"
        items = " ".join(f"<span style='color:{c}'>&#9679;</span> {name}" for name, c in self.colours.items())
        return f"<b>{self.label}</b>: {items}"


COLOURINGS = {
    c.label: c
    for c in (
        Colouring("query / key", "kind", True),
        Colouring("relative position", "rel_position", False),
        Colouring("token kind", "token_kind", True),
        Colouring("norm", "norm", False, "plasma"),
        Colouring("document", "doc_colour", True),
    )
}


# -- aggregating a view ----------------------------------------------------------------------------
def view_window(points: PointMap, x_range, y_range, width: int, height: int) -> Window | None:
    """The pyramid window to draw the view from, or None to datashade the points in view instead.

    None when the view is zoomed in past the base cells and holds at most :data:`MAX_WINDOW_POINTS`.
    """
    grid = points.grid
    window = grid.snap(x_range, y_range, max(width, height))
    pixel = max(x_range[1] - x_range[0], y_range[1] - y_range[0]) / max(width, height)
    if window.level == 0 and pixel < grid.cell and points.points.count_in(window) <= MAX_WINDOW_POINTS:
        return None
    return window


def pyramid_aggregate(points: PointMap, window: Window, show: tuple[str, ...], colouring: Colouring):
    """The colouring's aggregate of the window's cells, read from the pyramid: ``[y, x(, category)]``."""
    import xarray as xr

    kinds = [KINDS.index(k) for k in show]
    side = points.grid.cell * 2**window.level
    x = window.x_range[0] + (np.arange(window.width) + 0.5) * side
    y = window.y_range[0] + (np.arange(window.height) + 0.5) * side
    if colouring.categorical:
        counts = points.pyramid.window(window, colouring.column)
        n = counts.shape[2] // 2
        if colouring.column == "kind":
            values = counts * np.isin(np.arange(2), kinds)
        else:
            values = sum(counts[:, :, k * n : (k + 1) * n] for k in kinds)
        names = CATEGORY_NAMES[colouring.column]
        return xr.DataArray(values, coords=[y, x, names], dims=["y", "x", colouring.column])
    sums = points.pyramid.window(window, colouring.column)
    counts = points.pyramid.window(window, "kind")
    total, count = sum(sums[:, :, k] for k in kinds), sum(counts[:, :, k] for k in kinds)
    mean = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    return xr.DataArray(mean, coords=[y, x], dims=["y", "x"])


def window_frame(points: PointMap, x_range, y_range, show: tuple[str, ...]) -> pd.DataFrame:
    """The shown points of every base cell the view touches, with their colouring columns and ordered row."""
    window = points.grid.snap(x_range, y_range, 1 << 30)  # level 0: the cells under the view
    rows = points.points.rows_in(window)
    if len(show) == 1:
        rows = rows[points.column("kind", rows) == KINDS.index(show[0])]
    names = ("x", "y", "kind", *CATEGORIES, "rel_position", "norm")
    return points_frame({name: points.column(name, rows) for name in names}, rows)


def points_frame(columns: dict[str, np.ndarray], rows: np.ndarray) -> pd.DataFrame:
    """The frame Datashader aggregates, in one fixed layout (its compiled aggregations depend on it)."""
    frame = pd.DataFrame({axis: np.asarray(columns[axis], np.float32) for axis in ("x", "y")})
    for name, categories in CATEGORY_NAMES.items():
        frame[name] = pd.Categorical.from_codes(np.asarray(columns[name]).astype(np.int8), categories)
    for name in ("rel_position", "norm"):
        frame[name] = np.asarray(columns[name], np.float32)
    frame["row"] = np.asarray(rows, np.int64)
    return frame


def shade_view(points: PointMap, show, colouring: Colouring, x_range, y_range, width: int, height: int):
    """The view as an RGBA image, and the ordered row of one shown point under each pixel (-1 if none)."""
    import datashader as ds

    window = view_window(points, x_range, y_range, width, height)
    try:
        if window is not None:
            image = shade(pyramid_aggregate(points, window, show, colouring), colouring)
            return image, points.representatives(window, show)
        canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
        frame = window_frame(points, x_range, y_range, show)
        agg = canvas.points(frame, "x", "y", agg=ds.summary(colour=_reduction(colouring), row=ds.max("row")))
        rows = np.nan_to_num(agg["row"].to_numpy(), nan=-1).astype(np.int64)
        return shade(agg["colour"], colouring), rows
    finally:
        points.release()


def _reduction(colouring: Colouring):
    import datashader as ds

    return ds.count_cat(colouring.column) if colouring.categorical else ds.mean(colouring.column)


_warmed: set[str] = set()
_warming = threading.Lock()


def warm_up(label: str) -> None:
    """Compile Datashader's zoomed-in aggregation of colouring ``label`` once (numba), so no zoom waits for it."""
    import datashader as ds

    with _warming:
        if label in _warmed:
            return
        spread_out = np.linspace(-0.9, 0.9, 4, dtype=np.float32)  # isolated pixels: dynspread compiles too
        zeros = np.zeros(4, np.uint8)
        columns = {"x": spread_out, "y": spread_out, "kind": np.array([0, 1, 0, 1], np.uint8)}
        columns |= {name: zeros for name in CATEGORIES} | {"rel_position": spread_out, "norm": spread_out}
        frame = points_frame(columns, np.arange(4))
        canvas = ds.Canvas(plot_width=64, plot_height=64, x_range=(-1.0, 1.0), y_range=(-1.0, 1.0))
        colouring = COLOURINGS[label]
        agg = canvas.points(frame, "x", "y", agg=ds.summary(colour=_reduction(colouring), row=ds.max("row")))
        shade(agg["colour"], colouring)
        _warmed.add(label)


def warm_up_in_background(label: str) -> None:
    """:func:`warm_up` in a thread, unless done: the server does the default colouring, a view the one it shows."""
    if label not in _warmed:
        threading.Thread(target=warm_up, args=(label,), name=f"qkscale-warm-up-{label}", daemon=True).start()


def shade(agg, colouring: Colouring):
    """Colour an aggregate (counts per category, or a mean) and grow isolated pixels."""
    import datashader.transfer_functions as tf

    if colouring.categorical:
        image = tf.shade(agg, color_key=colouring.colours, how="eq_hist", min_alpha=80)
    else:
        image = tf.shade(agg, cmap=_palette(colouring.cmap), how="eq_hist")
    return tf.dynspread(image, threshold=0.6, max_px=3)


def _palette(name: str) -> list[str]:
    from bokeh import palettes

    return list(palettes.all_palettes[name.capitalize()][256])


# -- hover: one token, read when the cursor stops on it ---------------------------------------------
def lazy_column(rows: np.ndarray, value: Callable[[int], object]):
    """An xarray variable over ``rows`` whose values are computed only for the pixels read (the hovered one)."""
    import xarray as xr
    from xarray.backends import BackendArray
    from xarray.core import indexing

    class Column(BackendArray):
        shape, dtype = rows.shape, np.dtype(object)

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

        def _read(self, key):
            picked = np.asarray(rows[key])
            out = np.empty(picked.shape, object)
            for where, row in np.ndenumerate(picked):
                out[where] = value(int(row)) if row >= 0 else ""
            return out

    return xr.Variable(("y", "x"), indexing.LazilyIndexedArray(Column()))


def raster_element(
    points: HeadPoints,
    show: tuple[str, ...],
    colouring: Colouring,
    x_range,
    y_range,
    width: int,
    height: int,
    describe: Callable[[int], dict],
):
    """An ``hv.RGB`` of the view whose server-side hover shows the token under the cursor.

    ``describe(row)`` gives the hover columns of the point at ordered row ``row``.
    """
    import xarray as xr

    from qkscale.dashboard.plotting import hv

    image, rows = shade_view(points.map, show, colouring, x_range, y_range, width, height)
    height, width = rows.shape
    rgba = image.to_numpy().view(np.uint8).reshape(height, width, 4)
    variables = {channel: xr.Variable(("y", "x"), rgba[:, :, i]) for i, channel in enumerate("RGBA")}
    variables |= {column: lazy_column(rows, lambda row, c=column: describe(row)[c]) for column in HOVER_COLUMNS}
    variables["__index__"] = xr.Variable(("y", "x"), rows)
    dataset = xr.Dataset(variables, coords={"x": image.coords["x"].to_numpy(), "y": image.coords["y"].to_numpy()})
    dataset.attrs["selector_columns"] = ["__index__", *HOVER_COLUMNS]
    return hv.RGB(dataset, kdims=["x", "y"], vdims=list("RGBA"))


def embedding_2d(points: HeadPoints, show: tuple[str, ...], colouring: Colouring, describe: Callable[[int], dict]):
    """The 2D embedding, re-aggregated on the server on every zoom, pan and resize."""
    from qkscale.dashboard.plotting import hv

    def render(x_range=None, y_range=None, width=None, height=None, scale=1.0):
        width, height = max(int(width or PLOT_SIZE), 50), max(int(height or PLOT_SIZE), 50)
        started = time.perf_counter()
        element = raster_element(
            points, show, colouring, x_range or points.x_range, y_range or points.y_range, width, height, describe
        )
        milliseconds = (time.perf_counter() - started) * 1000
        log.info("L%dH%d: drew %dx%d px in %.0f ms", points.layer, points.head, width, height, milliseconds)
        return element

    streams = [hv.streams.RangeXY(x_range=points.x_range, y_range=points.y_range), hv.streams.PlotSize()]
    return hv.DynamicMap(render, streams=streams).opts(
        hv.opts.RGB(
            width=PLOT_SIZE,
            height=PLOT_SIZE,
            tools=["hover", "tap"],
            hover_tooltips=HOVER,
            active_tools=["wheel_zoom"],
            xaxis=None,
            yaxis=None,
            title=f"L{points.layer}H{points.head} · {points.method} · {points.shown(show):,} points",
        )
    )


# -- 3D: a sample ----------------------------------------------------------------------------------
def embedding_3d(frame: pd.DataFrame, colouring: Colouring, title: str):
    """A Plotly 3D scatter of sampled points (columns x, y, z, hover and the colouring's column).

    Plotly reads tags (``<b>``, ``<a href>``) in titles and hover texts: store strings go in
    escaped, and Plotly shows the entities as the characters they stand for.
    """
    import html

    import plotly.graph_objects as go

    marker: dict = {"size": 2, "opacity": 0.7}
    if colouring.categorical:
        marker["color"] = frame[colouring.column].map(colouring.colours).astype(str).to_numpy()
    else:
        marker.update(color=frame[colouring.column].to_numpy(), colorscale=colouring.cmap.capitalize(), showscale=True)
    figure = go.Figure(
        go.Scatter3d(
            x=frame["x"],
            y=frame["y"],
            z=frame["z"],
            mode="markers",
            marker=marker,
            text=[html.escape(str(text)) for text in frame["hover"]],
            hoverinfo="text",
        )
    )
    margin = {"l": 0, "r": 0, "t": 40, "b": 0}
    figure.update_layout(title=html.escape(title), width=PLOT_SIZE, height=PLOT_SIZE, margin=margin)
    return figure


def figure_page(figure, served: bool) -> str:
    """An ``<iframe>`` showing a Plotly figure.

    Plotly's 4.7 MB script loads only when a 3D view is opened (inside the frame, from Panel's own
    static files when served), so pages without 3D views open seconds faster.
    """
    import html

    if served:
        from panel.models.plotly import PlotlyPlot

        script = "/" + PlotlyPlot.__javascript__[0]
    else:
        script = True  # a notebook: inline, works offline
    page = figure.to_html(include_plotlyjs=script, full_html=True, config={"displaylogo": False})
    width, height = figure.layout.width or PLOT_SIZE, figure.layout.height or PLOT_SIZE
    return (
        f'<iframe class="qk-3d" srcdoc="{html.escape(page, quote=True)}" '
        f'style="width:{width + 20}px;height:{height + 20}px;border:0"></iframe>'
    )


# -- search matches and the clicked token ----------------------------------------------------------
MATCH_COLOUR = "#e41a1c"


def match_points(points: HeadPoints, found: np.ndarray, show: tuple[str, ...]):
    """The shown queries and keys of the tokens in ``found`` (search matches) as points."""
    from qkscale.dashboard.plotting import hv

    parts = [pd.DataFrame(points.coordinates(found, kind))[["x", "y"]] for kind in KINDS if kind in show]
    return hv.Points(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"x": [], "y": []}), ["x", "y"])


def matches_layer(match_element):
    """Search matches, datashaded like the embedding (any number of them) and grown to stay visible."""
    from holoviews.operation.datashader import datashade, dynspread

    shaded = datashade(match_element, cmap=[MATCH_COLOUR, MATCH_COLOUR], min_alpha=255)
    return dynspread(shaded, threshold=0.9, max_px=4)


def selection_layer(points: HeadPoints | None, token: int | None, kind: str, links: pd.DataFrame | None):
    """Overlay: the clicked point (token ``token``'s query or key) and lines to its top-k links.

    Always the same three layers (empty where nothing is selected), as a DynamicMap requires.
    """
    from qkscale.dashboard.plotting import hv

    empty = pd.DataFrame({"x": [], "y": []})
    segments, ends, star = [], empty, empty
    if points is not None and token is not None and links is not None:
        star = pd.DataFrame(points.coordinates(np.array([token]), kind))[["x", "y"]]
        other = "k" if kind == "q" else "q"
        ends = pd.DataFrame(points.coordinates(links["id"].to_numpy(), other))[["x", "y"]]
        x, y = float(star["x"].iat[0]), float(star["y"].iat[0])
        segments = [
            (x, y, float(ex), float(ey), float(w))
            for ex, ey, w in zip(ends["x"], ends["y"], links["weight"], strict=True)
        ]
    return hv.Overlay(
        [
            hv.Segments(segments, ["x0", "y0", "x1", "y1"], ["weight"]).opts(
                color="black", line_width=hv.dim("weight") * 6 + 1, alpha=0.8
            ),
            hv.Points(ends, ["x", "y"]).opts(color="white", line_color="black", size=7),
            hv.Points(star, ["x", "y"]).opts(color="black", marker="star", size=16),
        ]
    )
