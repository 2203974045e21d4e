"""The single-head view's 2D embedding: one Bokeh figure per session, redrawn on the server.

The figure, its tools and its glyphs are made once per session. Opening another head, a zoom, a
pan, a search or a click then change data only: the server re-aggregates the view with
:func:`single.shade_view` (the pyramid or the points in view, so the cost follows the pixels and
the points shown, never the head) and sends the new image and the few points drawn over it.
Hover is served the same way: the browser reports where the cursor is, and the server answers with
the token under it, read when the cursor stops there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bokeh.core.properties import Any, Dict, Float, List, String
from bokeh.model import DataModel

from qkscale.dashboard import single
from qkscale.dashboard.points import HeadPoints

log = logging.getLogger(__name__)
COALESCE_MS = 30  # range updates closer together than this (one wheel gesture) draw once
NOTHING = -1  # the hover index where no point is under the cursor


class HoverState(DataModel):
    """Where the cursor is over the embedding (set by the browser) and what lies under it (set by the server)."""

    xy = List(Float)
    data = Dict(String, Any)


@dataclass(frozen=True)
class Head:
    """What the figure shows: a head's points, which kinds, coloured how; ``describe(row)`` gives hover columns."""

    points: HeadPoints
    show: tuple[str, ...]
    colouring: single.Colouring
    describe: Callable[[int], dict]


@dataclass(frozen=True)
class Drawn:
    """An image drawn: its head, its ranges and the ordered row of one shown point under each pixel (-1 if none)."""

    head: Head
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    rows: np.ndarray

    def row_at(self, x: float, y: float) -> int:
        """The row under data point (x, y), or -1."""
        height, width = self.rows.shape
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        i, j = int(np.floor((x - x0) / (x1 - x0) * width)), int(np.floor((y - y0) / (y1 - y0) * height))
        return int(self.rows[j, i]) if 0 <= i < width and 0 <= j < height else NOTHING


class LiveEmbedding:
    """A head's joint embedding in one figure that lives as long as its session; ``on_tap(x, y)`` on every click."""

    def __init__(self, on_tap: Callable[[float, float], None]):
        from bokeh.events import RangesUpdate, Tap
        from bokeh.models import ColumnDataSource, Range1d
        from bokeh.plotting import figure

        self.figure = figure(
            width=single.PLOT_SIZE,
            height=single.PLOT_SIZE,
            x_range=Range1d(0.0, 1.0),
            y_range=Range1d(0.0, 1.0),
            tools="pan,wheel_zoom,box_zoom,reset,tap",
            active_scroll="wheel_zoom",
            x_axis_location=None,
            y_axis_location=None,
            css_classes=["qk-embedding"],
        )
        self.figure.grid.visible = False
        self.figure.visible = False  # until a head is shown
        self.image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        shown = self.figure.image_rgba("image", "x", "y", "dw", "dh", source=self.image)
        self.links = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": [], "width": []})
        self.figure.segment("x0", "y0", "x1", "y1", line_width="width", color="black", alpha=0.8, source=self.links)
        self.ends = ColumnDataSource({"x": [], "y": []})
        self.figure.scatter("x", "y", size=7, fill_color="white", line_color="black", source=self.ends)
        self.star = ColumnDataSource({"x": [], "y": []})
        self.figure.scatter("x", "y", marker="star", size=16, color="black", source=self.star)
        self.hover = HoverState(xy=[], data={"__index__": NOTHING})
        self.figure.add_tools(_hover_tool(shown, self.hover))
        self.hover.on_change("xy", lambda attr, old, new: self._on_hover(new))
        self.figure.on_event(RangesUpdate, lambda event: self._on_ranges(event))
        self.figure.on_event(Tap, lambda event: None if event.x is None else on_tap(event.x, event.y))
        self.head: Head | None = None  # what was asked for last (the head, its marks, the ranges) ...
        self.marked: np.ndarray | None = None
        self.view: tuple[tuple[float, float], tuple[float, float]] | None = None
        self.drawn: Drawn | None = None  # ... and what the figure shows now
        self._tickets = dict.fromkeys(("image", "selection", "hover"), 0)
        self._asking = threading.Lock()
        self._wanted = None
        self._pending = False

    # -- what is shown ---------------------------------------------------------------------------
    def show(self, head: Head, marked: np.ndarray | None = None) -> None:
        """Show ``head`` whole (the view reset to its extent), with the points ``marked`` drawn over it.

        The figure's ``tags`` then name the head (``["L3H0"]``): the page's title says it in words.
        """
        x_range, y_range = head.points.x_range, head.points.y_range
        with self._asking:
            self.head, self.marked, self.view = head, marked, (x_range, y_range)
            ticket = self._ticket("image")
        data, drawn = self._draw(head, marked, x_range, y_range)

        def change():
            for axis, (start, end) in ((self.figure.x_range, x_range), (self.figure.y_range, y_range)):
                axis.update(start=start, end=end, reset_start=start, reset_end=end)
            self.figure.tags = [f"L{head.points.layer}H{head.points.head}"]
            self.drawn, self.image.data = drawn, data
            self.figure.visible = True

        self._apply("image", ticket, change)

    def hide(self) -> None:
        """Hide the figure (no 2D head to show)."""
        with self._asking:
            self.head = None
            ticket = self._ticket("image")
        self._apply("image", ticket, lambda: setattr(self.figure, "visible", False))

    def mark(self, marked: np.ndarray | None) -> None:
        """Draw the points ``marked`` (search matches: ``(n, 2)`` x, y) over the current view."""
        with self._asking:
            self.marked = marked
            if self.head is None:
                return
            head, view, ticket = self.head, self.view, self._ticket("image")
        self._redraw(head, marked, view, ticket)

    def select(self, star: np.ndarray | None, ends: np.ndarray, weights: np.ndarray) -> None:
        """Draw the clicked point ``star`` (x, y) and lines to its links' ends ``(n, 2)``, as thick as ``weights``."""
        links = {"x0": [], "y0": [], "x1": [], "y1": [], "width": []}
        if star is not None and len(ends):
            count = len(ends)
            links = {
                "x0": np.full(count, star[0]),
                "y0": np.full(count, star[1]),
                "x1": ends[:, 0],
                "y1": ends[:, 1],
                "width": np.asarray(weights, float) * 6 + 1,
            }
        star_data = {"x": [] if star is None else [float(star[0])], "y": [] if star is None else [float(star[1])]}

        def change():
            self.links.data = links
            self.ends.data = {"x": ends[:, 0], "y": ends[:, 1]} if len(ends) else {"x": [], "y": []}
            self.star.data = star_data

        with self._asking:
            ticket = self._ticket("selection")
        self._apply("selection", ticket, change)

    # -- the server's side of zoom, pan and hover ----------------------------------------------
    def zoom_to(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        """Redraw for the ranges the browser now shows."""
        with self._asking:
            if self.head is None:
                return
            self.view = view = (tuple(x_range), tuple(y_range))
            head, marked, ticket = self.head, self.marked, self._ticket("image")
        self._redraw(head, marked, view, ticket)

    def hovered(self, x: float, y: float) -> dict:
        """The hover columns of the shown point under (x, y), with its ``__index__`` (-1 and nothing else if none)."""
        drawn = self.drawn
        row = drawn.row_at(x, y) if drawn is not None else NOTHING
        if row < 0:
            return {"__index__": NOTHING}
        described = drawn.head.describe(row)
        return {"__index__": row, **{column: str(described[column]) for column in single.HOVER_COLUMNS}}

    def _on_hover(self, xy: list[float]) -> None:
        if len(xy) == 2 and np.isfinite(xy).all():
            with self._asking:
                ticket = self._ticket("hover")
            data = self.hovered(*xy)
            self._apply("hover", ticket, lambda: setattr(self.hover, "data", data))

    def _on_ranges(self, event) -> None:
        """Coalesce the range updates of one gesture, then draw the last."""
        self._wanted = ((event.x0, event.x1), (event.y0, event.y1))
        document = self.figure.document
        if document is None or document.session_context is None:
            self._draw_wanted()
        elif not self._pending:
            self._pending = True
            document.add_timeout_callback(self._draw_wanted, COALESCE_MS)

    def _draw_wanted(self) -> None:
        self._pending = False
        if self._wanted is not None:
            self.zoom_to(*self._wanted)

    def _redraw(self, head: Head, marked, view, ticket: int) -> None:
        data, drawn = self._draw(head, marked, *view)

        def change():
            self.drawn, self.image.data = drawn, data

        self._apply("image", ticket, change)

    def _draw(self, head: Head, marked, x_range, y_range) -> tuple[dict, Drawn]:
        """The image data of ``head`` over ``x_range``, ``y_range`` (snapped to the pyramid's cells when zoomed out)."""
        width, height = _inner_size(self.figure)
        started = time.perf_counter()
        image, rows = single.shade_view(
            head.points.map, head.show, head.colouring, x_range, y_range, width, height, marked
        )
        (x0, x1), (y0, y1) = image.attrs["x_range"], image.attrs["y_range"]
        milliseconds = (time.perf_counter() - started) * 1000
        log.info("L%dH%d: drew %dx%d px in %.0f ms", head.points.layer, head.points.head, width, height, milliseconds)
        data = {"image": [image.to_numpy()], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}
        return data, Drawn(head, (x0, x1), (y0, y1), rows)

    def _ticket(self, kind: str) -> int:
        """Number a request of ``kind`` (under ``_asking``): only the newest of each kind reaches the figure."""
        self._tickets[kind] += 1
        return self._tickets[kind]

    def _apply(self, kind: str, ticket: int, change: Callable[[], None]) -> None:
        """Make a change to the figure's models, unless a newer request of its ``kind`` came meanwhile.

        At once when not served, else on the document's loop: served, the caller may be one of
        Panel's threads (two of them may draw for one session at once, finishing in either order);
        Bokeh documents may only be changed from their loop, and ``add_next_tick_callback`` is the
        way there that is safe from any thread.
        """

        def newest_only():
            if self._tickets[kind] == ticket:
                change()

        document = self.figure.document
        if document is None or document.session_context is None:
            newest_only()
        else:
            document.add_next_tick_callback(newest_only)


def _inner_size(figure) -> tuple[int, int]:
    """The plot area's pixels, as the browser reported them (the figure's size until it has)."""
    from bokeh.core.property.descriptors import UnsetValueError

    try:
        width, height = figure.inner_width, figure.inner_height
    except UnsetValueError:
        width, height = figure.width, figure.height
    return max(int(width or single.PLOT_SIZE), 50), max(int(height or single.PLOT_SIZE), 50)


def _hover_tool(renderer, state: HoverState):
    """A hover tool that shows ``state.data`` (the server's answer for the cursor's place) as a tooltip."""
    from bokeh.models import CustomJS, HoverTool
    from bokeh.models.dom import Div, Span, Styles, ValueOf

    value = "export default ({state, column}) => String(state.data[column] ?? '')"
    rows = []
    for label, column in single.HOVER:
        formatter = CustomJS(args={"state": state, "column": column}, code=value)
        rows += [
            Span(children=[f"{label}:"], style={"color": "#26aae1", "text_align": "right"}),
            Span(children=[ValueOf(obj=state, attr="data", format="@{custom}", formatter=formatter)]),
        ]
    grid = Div(children=rows, style=Styles(display="grid", grid_template_columns="auto auto", column_gap="10px"))
    report = "export default ({state}, _, {geometry}) => {state.xy = [geometry.x, geometry.y]}"
    over_a_point = f"export default ({{state}}) => state.data.__index__ != {NOTHING}"
    return HoverTool(
        renderers=[renderer],
        tooltips=grid,
        callback=CustomJS(args={"state": state}, code=report),
        filters={"": CustomJS(args={"state": state}, code=over_a_point)},
    )
