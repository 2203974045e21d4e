"""Single-head view: one head's joint embedding, datashaded and re-aggregated on every zoom and pan.

Every point is drawn (no sampling in 2D): Datashader aggregates them per pixel on the server,
``dynspread`` keeps isolated points visible, and a ``selector`` keeps the first point of each pixel
so that the hover tooltip shows a real token and its context. 3D views use a sample of at most
:data:`MAX_3D_POINTS` points, drawn by Plotly in the browser.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.dashboard.data import HeadPoints
from qkscale.dashboard.thumbnails import KEY_COLOR, QUERY_COLOR

log = logging.getLogger(__name__)
MAX_3D_POINTS = 100_000
PLOT_SIZE = 640
HOVER_COLUMNS = ["token", "kind", "doc", "position", "context", "id"]
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


def visible_points(points: HeadPoints, show: tuple[str, ...]) -> pd.DataFrame:
    """The points of the kinds in ``show`` ('q', 'k')."""
    frame = points.frame
    if set(show) >= {"q", "k"}:
        return frame
    return frame[frame["kind"].isin(list(show))]


def padded_range(values: np.ndarray, margin: float = 0.03) -> tuple[float, float]:
    """``values``' extent with a small margin (never empty)."""
    if not len(values):
        return -1.0, 1.0
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * margin or 1.0
    return low - pad, high + pad


def extent(points: HeadPoints) -> tuple[tuple[float, float], tuple[float, float]]:
    """The x and y ranges that show every point of the head."""
    return padded_range(points.frame["x"].to_numpy()), padded_range(points.frame["y"].to_numpy())


def shade_points(
    frame: pd.DataFrame,
    colouring: Colouring,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    width: int,
    height: int,
):
    """Datashade ``frame`` into an RGBA image, and the row of one point under each pixel (-1 if none).

    One pass aggregates both (``summary`` of the colouring's reduction and ``max('row')``), so
    hovering needs no second search; ``dynspread`` then grows isolated pixels.
    """
    import datashader as ds
    import datashader.transfer_functions as tf

    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    reduction = ds.count_cat(colouring.column) if colouring.categorical else ds.mean(colouring.column)
    agg = canvas.points(frame, "x", "y", agg=ds.summary(colour=reduction, row=ds.max("row")))
    if colouring.categorical:
        image = tf.shade(agg["colour"], color_key=colouring.colours, how="eq_hist", min_alpha=80)
    else:
        image = tf.shade(agg["colour"], cmap=_palette(colouring.cmap), how="eq_hist")
    image = tf.dynspread(image, threshold=0.6, max_px=3)
    rows = np.nan_to_num(agg["row"].to_numpy(), nan=-1).astype(np.int64)
    return image, rows


def _palette(name: str) -> list[str]:
    from bokeh import palettes

    return list(palettes.all_palettes[name.capitalize()][256])


def raster_element(points: HeadPoints, frame: pd.DataFrame, colouring: Colouring, x_range, y_range, width, height):
    """An ``hv.RGB`` of the shaded points whose server-side hover shows the token under the cursor."""
    import xarray as xr

    from qkscale.dashboard.plotting import hv

    image, rows = shade_points(frame, colouring, x_range, y_range, width, height)
    rgba = image.to_numpy().view(np.uint8).reshape(height, width, 4)
    empty = rows < 0
    picked = np.where(empty, 0, rows).ravel()
    columns = {channel: rgba[:, :, i] for i, channel in enumerate("RGBA")}
    columns |= {column: points.values(column, picked).reshape(height, width) for column in HOVER_COLUMNS}
    columns["__index__"] = np.where(empty, -1, rows)
    # fastpath: xarray would otherwise round-trip object (string) arrays through pandas on every zoom
    variables = {name: xr.Variable(("y", "x"), values, fastpath=True) for name, values in columns.items()}
    dataset = xr.Dataset(variables, coords={"x": image.coords["x"].to_numpy(), "y": image.coords["y"].to_numpy()})
    dataset.attrs["selector_columns"] = ["__index__", *HOVER_COLUMNS]
    return hv.RGB(dataset, kdims=["x", "y"], vdims=list("RGBA"))


def embedding_2d(points: HeadPoints, show: tuple[str, ...], colouring: Colouring):
    """The 2D embedding, datashaded on the server and re-aggregated on every zoom, pan and resize."""
    from qkscale.dashboard.plotting import hv

    frame = visible_points(points, show)
    x_start, y_start = extent(points)

    def render(x_range=None, y_range=None, width=None, height=None, scale=1.0):
        width, height = max(int(width or PLOT_SIZE), 50), max(int(height or PLOT_SIZE), 50)
        started = time.perf_counter()
        element = raster_element(points, frame, colouring, x_range or x_start, y_range or y_start, width, height)
        milliseconds = (time.perf_counter() - started) * 1000
        log.info(
            "L%dH%d: re-aggregated %d points into %dx%d px in %.0f ms",
            points.layer,
            points.head,
            len(frame),
            width,
            height,
            milliseconds,
        )
        return element

    streams = [hv.streams.RangeXY(x_range=x_start, y_range=y_start), hv.streams.PlotSize()]
    return hv.DynamicMap(render, streams=streams).opts(
        hv.opts.RGB(
            width=PLOT_SIZE,
            height=PLOT_SIZE,
            tools=["hover", "tap"],
            hover_tooltips=HOVER,
            active_tools=["wheel_zoom"],
            xaxis=None,
            yaxis=None,
            title=f"L{points.layer}H{points.head} · {points.method} · {len(frame):,} points",
        )
    )


def sample_3d(points: HeadPoints, show: tuple[str, ...], limit: int = MAX_3D_POINTS, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` visible points, drawn uniformly (with a fixed seed: stable between renders)."""
    frame = visible_points(points, show)
    if len(frame) <= limit:
        return frame
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), limit, replace=False))
    return frame.iloc[chosen]


def embedding_3d(points: HeadPoints, show: tuple[str, ...], colouring: Colouring):
    """A Plotly 3D scatter of a sample of the points (WebGL in the browser)."""
    import plotly.graph_objects as go

    frame = sample_3d(points, show)
    hover = frame["token"].astype(str) + " (" + frame["kind"].astype(str) + ", doc " + frame["doc"].astype(str) + ")"
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
            text=hover,
            hoverinfo="text",
        )
    )
    shown = f"{len(frame):,} of {len(visible_points(points, show)):,} points"
    figure.update_layout(
        title=f"L{points.layer}H{points.head} · {points.method} 3D · {shown}",
        width=PLOT_SIZE,
        height=PLOT_SIZE,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
    )
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


def nearest_point(points: HeadPoints, show: tuple[str, ...], x: float, y: float) -> int | None:
    """The row of the visible point nearest to (x, y) in :attr:`HeadPoints.frame`, or None."""
    frame = points.frame
    distance = (frame["x"].to_numpy() - x) ** 2 + (frame["y"].to_numpy() - y) ** 2
    if set(show) < {"q", "k"}:
        distance = np.where(frame["kind"].isin(list(show)).to_numpy(), distance, np.inf)
    if not len(distance) or not np.isfinite(distance.min()):
        return None
    return int(np.argmin(distance))


MATCH_COLOUR = "#e41a1c"


def match_points(points: HeadPoints, found: np.ndarray):
    """The queries and keys of the tokens in ``found`` (search matches) as points."""
    from qkscale.dashboard.plotting import hv

    rows = np.concatenate([points.rows["q"][found], points.rows["k"][found]])
    return hv.Points(points.frame.iloc[np.sort(rows[rows >= 0])], ["x", "y"])


def matches_layer(match_element):
    """Search matches, datashaded like the embedding (any number of them) and grown to stay visible."""
    from holoviews.operation.datashader import datashade, dynspread

    shaded = datashade(match_element, cmap=[MATCH_COLOUR, MATCH_COLOUR], min_alpha=255)
    return dynspread(shaded, threshold=0.9, max_px=4)


def selection_layer(points: HeadPoints | None, row: int | None, links: pd.DataFrame | None):
    """Overlay: the clicked point and lines to its top-k attended tokens.

    Always the same three layers (empty where nothing is selected), as a DynamicMap requires.
    """
    from qkscale.dashboard.plotting import hv

    empty = pd.DataFrame({"x": [], "y": [], "token": []})
    segments, ends, star = [], empty, empty
    if points is not None and row is not None and links is not None:
        frame = points.frame
        star = frame.iloc[[row]]
        other = "k" if star["kind"].iat[0] == "q" else "q"
        targets = [(points.point_of(int(t), other), w) for t, w in zip(links["id"], links["weight"], strict=True)]
        targets = [(t, w) for t, w in targets if t >= 0]
        x, y = float(star["x"].iat[0]), float(star["y"].iat[0])
        segments = [(x, y, float(frame["x"].iat[t]), float(frame["y"].iat[t]), float(w)) for t, w in targets]
        ends = frame.iloc[[t for t, _ in targets]]
    return hv.Overlay(
        [
            hv.Segments(segments, ["x0", "y0", "x1", "y1"], ["weight"]).opts(
                color="black", line_width=hv.dim("weight") * 6 + 1, alpha=0.8
            ),
            hv.Points(ends, ["x", "y"], ["token"]).opts(color="white", line_color="black", size=7),
            hv.Points(star, ["x", "y"], ["token"]).opts(color="black", marker="star", size=16),
        ]
    )
