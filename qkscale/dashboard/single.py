"""Single-head view: one head's joint embedding, drawn from its point map on every zoom and pan.

Every point counts (no sampling in 2D). A view is snapped to the cells of the pyramid level whose
cells are about a pixel: zoomed out, that level's counts (or sums) are the aggregate, exactly what
Datashader would compute from every point over the snapped range; zoomed in past the base cells,
the points of the window are read from the ordered columns and datashaded. Either way the work is
set by the pixels and the points in view, never by the head. The figure that shows a view lives in
:mod:`qkscale.dashboard.embedding`. 3D views use a sample of :meth:`HeadPoints.sample`, drawn by Plotly.
"""

from __future__ import annotations

import logging
import threading
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


def shade_view(points: PointMap, show, colouring: Colouring, x_range, y_range, width: int, height: int, marked=None):
    """The view as an RGBA image, and the ordered row of one shown point under each pixel (-1 if none).

    The image's ``attrs`` hold the ranges it spans (``x_range``, ``y_range``: the view's, or the
    snapped window's when drawn from the pyramid). ``marked`` (an ``(n, 2)`` array of x, y, or
    None) are points drawn over the image: search matches.
    """
    import datashader as ds

    window = view_window(points, x_range, y_range, width, height)
    try:
        if window is not None:
            image = shade(pyramid_aggregate(points, window, show, colouring), colouring)
            image, rows = mark(image, marked, window.x_range, window.y_range), points.representatives(window, show)
        else:
            canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
            frame = window_frame(points, x_range, y_range, show)
            agg = canvas.points(frame, "x", "y", agg=ds.summary(colour=_reduction(colouring), row=ds.max("row")))
            rows = np.nan_to_num(agg["row"].to_numpy(), nan=-1).astype(np.int64)
            image = mark(shade(agg["colour"], colouring), marked, x_range, y_range)
    finally:
        points.release()
    spans = (window.x_range, window.y_range) if window is not None else (x_range, y_range)
    image.attrs.update(x_range=tuple(map(float, spans[0])), y_range=tuple(map(float, spans[1])))
    return image, rows


def mark(image, marked, x_range, y_range):
    """``image`` (spanning ``x_range``, ``y_range``) with the points ``marked`` drawn over it, grown to stay visible."""
    import datashader as ds
    import datashader.transfer_functions as tf

    if marked is None or not len(marked):
        return image
    height, width = image.shape
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    counts = canvas.points(pd.DataFrame({"x": marked[:, 0], "y": marked[:, 1]}), "x", "y", agg=ds.count())
    marks = tf.shade(counts, cmap=[MATCH_COLOUR, MATCH_COLOUR], min_alpha=255)
    marks = tf.dynspread(marks, threshold=0.9, max_px=4).to_numpy()
    over = marks.view(np.uint8).reshape(height, width, 4)[..., 3] > 0
    return tf.Image(np.where(over, marks, image.to_numpy()), dims=image.dims, coords=image.coords)


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

    return tf.dynspread(shade_occupied(agg, colouring), threshold=0.6, max_px=3)


def shade_occupied(agg, colouring: Colouring):
    """Datashader's ``tf.shade`` of ``agg``, computed over the pixels that hold points only.

    Empty pixels are transparent and take no part in the histogram equalisation, so shading just
    the occupied ones (as one row) and placing them back gives Datashader's image exactly, at a
    cost set by the points in view rather than by the plot's pixels (most of which are empty).
    """
    import datashader.transfer_functions as tf
    import xarray as xr

    values = agg.to_numpy()
    occupied = values.sum(axis=2) > 0 if colouring.categorical else np.isfinite(values)
    pixels = np.zeros(occupied.shape, np.uint32)
    if occupied.any():
        dims = ("y", "x", *agg.dims[2:])
        row = xr.DataArray(values[occupied][np.newaxis], dims=dims, coords={d: agg.coords[d] for d in agg.dims[2:]})
        if colouring.categorical:
            shaded = tf.shade(row, color_key=colouring.colours, how="eq_hist", min_alpha=80)
        else:
            shaded = tf.shade(row, cmap=_palette(colouring.cmap), how="eq_hist")
        pixels[occupied] = shaded.to_numpy()[0]
    y, x = agg.dims[:2]
    return tf.Image(pixels, dims=(y, x), coords={y: agg.coords[y], x: agg.coords[x]})


def _palette(name: str) -> list[str]:
    from bokeh import palettes

    return list(palettes.all_palettes[name.capitalize()][256])


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


def match_coordinates(points: HeadPoints, found: np.ndarray, show: tuple[str, ...]) -> np.ndarray:
    """The x, y of the shown queries and keys of the tokens in ``found`` (search matches): ``(n, 2)``."""
    parts = [points.coordinates(found, kind) for kind in KINDS if kind in show]
    return np.concatenate([np.column_stack([p["x"], p["y"]]) for p in parts]).astype(np.float64)


def selection_points(points: HeadPoints, token: int, kind: str, links: pd.DataFrame):
    """The clicked point (token ``token``'s query or key) as x, y, and the ``(n, 2)`` other ends of its links."""
    star = points.coordinates(np.array([token]), kind)
    ends = points.coordinates(links["id"].to_numpy(), "k" if kind == "q" else "q")
    return np.array([star["x"][0], star["y"][0]], float), np.column_stack([ends["x"], ends["y"]]).astype(float)
