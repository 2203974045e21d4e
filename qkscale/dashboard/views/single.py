"""The single-head view: one head's joint embedding, its navigation, search and the clicked token."""

from __future__ import annotations

import html
from typing import NamedTuple

import numpy as np
import panel as pn
import param

from qkscale.dashboard import single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.embedding import Head, LiveEmbedding
from qkscale.dashboard.points import HeadPoints
from qkscale.dashboard.state import SessionState
from qkscale.dashboard.views.attention import attention_controls
from qkscale.dashboard.views.base import View, button, guarded, lazy
from qkscale.dashboard.views.search import TokenSearch
from qkscale.dashboard.views.token import TokenDetails
from qkscale.errors import QKScaleError
from qkscale.selection import format_selection

SELECTION = ["token", "token_kind", "top_k", "hide_special"]  # what the clicked token's overlay draws from


class Shown(NamedTuple):
    """What of the session's state the embedding shows."""

    layer: int
    head: int
    method: str
    dims: int
    colour: str
    show: tuple[str, ...]

    @classmethod
    def of(cls, state: SessionState) -> Shown:
        return cls(state.layer, state.head, state.method, state.dims, state.colour, tuple(state.show))


class SingleHeadView(View):
    """One head (``state.layer``/``state.head``) in a projection, every point drawn; click a point to select it."""

    def __init__(self, data: DashboardData, state: SessionState, **params):
        super().__init__(data, state, **params)
        self.search = TokenSearch(data, state)
        self.live = LiveEmbedding(on_tap=self._on_tap)
        self.figure = pn.pane.Bokeh(self.live.figure)
        self.search.param.watch(lambda event: self._mark(), "matches")
        self.state.param.watch(lambda *events: self._draw_selection(), SELECTION)

    def __panel__(self):
        params = self.state.param
        nav = pn.Row(
            pn.widgets.Select.from_param(
                params.layer, options={f"L{layer}": layer for layer in self.data.store.layers}, label="layer", width=90
            ),
            pn.widgets.Select.from_param(params.head, options=self.data.store.heads, label="head", width=80),
            *(
                button(label, lambda step=step: self.step(*step), width=80, css_classes=["qk-nav"])
                for label, step in (("◀ head", (0, -1)), ("head ▶", (0, 1)), ("▲ layer", (-1, 0)), ("layer ▼", (1, 0)))
            ),
        )
        view = pn.Row(
            pn.widgets.Select.from_param(params.method, label="projection", width=110),
            pn.widgets.RadioButtonGroup.from_param(params.dims, label="dims"),
            pn.widgets.Select.from_param(params.colour, label="colour by", width=150),
            pn.widgets.CheckButtonGroup.from_param(params.show, label="show", options={"queries": "q", "keys": "k"}),
        )
        links = pn.Row(
            pn.widgets.IntInput.from_param(params.top_k, label="top-k lines", width=100),
            *attention_controls(self.state),
        )
        embedding = pn.Column(self._legend, lazy(self._embedding), self.figure)
        return pn.Column(nav, view, self.search, links, pn.Row(embedding, TokenDetails(self.data, self.state)))

    def step(self, layers: int, heads: int) -> None:
        """Move to the next/previous head or layer among the stored ones (wrapping around)."""
        stored, stored_heads = self.data.store.layers, self.data.store.heads
        layer = stored[(stored.index(self.state.layer) + layers) % len(stored)]
        head = stored_heads[(stored_heads.index(self.state.head) + heads) % len(stored_heads)]
        self.state.param.update(layer=layer, head=head)

    @param.depends("state.colour")
    def _legend(self):
        legend = single.COLOURINGS[self.state.colour].legend()
        return pn.pane.HTML(f"{legend} &nbsp; <span style='color:#666'>hover a point for its token; click it</span>")

    @param.depends(*(f"state.{name}" for name in Shown._fields))
    @guarded
    def _embedding(self):
        """The view's title (or why it cannot be drawn); a 2D head goes to the session's live figure.

        Drawn again if the state changed while drawing: two of the server's threads may change it
        at once, and the figure must end showing what the state says.
        """
        while True:
            wanted = Shown.of(self.state)
            title = self._draw(wanted)
            if Shown.of(self.state) == wanted:
                return title

    def _draw(self, wanted: Shown):
        store = self.data.store
        self.live.hide()
        if (wanted.layer, wanted.head) not in self.data.heads:
            raise QKScaleError(
                f"layer {wanted.layer} head {wanted.head} is not in this store (layers "
                f"{format_selection(store.layers)}; heads {format_selection(store.heads)})"
            )
        if not self.data.has_projection(wanted.layer, wanted.head, wanted.method, wanted.dims):
            raise QKScaleError(
                f"layer {wanted.layer} head {wanted.head} has no {wanted.method} {wanted.dims}D projection; make it "
                f"with `qkscale project {store.path} --method {wanted.method} --dims {wanted.dims} "
                f"--layers {wanted.layer} --heads {wanted.head}`"
            )
        if not wanted.show:
            raise QKScaleError("choose queries, keys or both to show")
        points = self.data.head_points(wanted.layer, wanted.head, wanted.method, wanted.dims)
        colouring = single.COLOURINGS[wanted.colour]
        if wanted.dims == 3:
            frame = self.data.sample_3d(points, wanted.show)
            figure = single.embedding_3d(frame, colouring, _title_text(points, len(frame)))
            served = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
            pane = pn.pane.HTML(single.figure_page(figure, served), css_classes=["qk-embedding-3d"])
            return pn.Column(_title(points, len(frame)), pane)
        single.warm_up_in_background(colouring.label)  # before the first zoom of this colouring
        head = Head(points, wanted.show, colouring, lambda row: self.data.hover(points, row))
        self.live.show(head, self._matches(head))
        self._draw_selection()
        return _title(points, points.shown(wanted.show))

    def _matches(self, head: Head):
        """The search matches' coordinates in ``head`` (None without a search)."""
        found = self.search.match_ids()
        return single.match_coordinates(head.points, found, head.show) if len(found) else None

    def _mark(self) -> None:
        if self.live.head is not None:
            self.live.mark(self._matches(self.live.head))

    def _draw_selection(self) -> None:
        """Draw the clicked token and lines to its top-k links (nothing while no token is selected)."""
        head, state = self.live.head, self.state
        if head is None:
            return
        points = head.points
        star, ends, weights = None, np.empty((0, 2)), np.empty(0)
        if 0 <= state.token < points.n_tokens:
            links = self.data.top_links(
                state.token, state.token_kind, state.layer, state.head, state.top_k, state.hide_special
            )
            star, ends = single.selection_points(points, state.token, state.token_kind, links)
            weights = links["weight"].to_numpy()
        self.live.select(star, ends, weights)

    def _on_tap(self, x: float, y: float) -> None:
        drawn = self.live.drawn  # the head the user sees and clicked on
        if drawn is None:
            return
        head = drawn.head
        row = head.points.map.nearest(x, y, head.show)
        if row is not None:
            self.select_point(head.points, row)

    def select_point(self, points: HeadPoints, row: int) -> None:
        """Select the token of ordered point ``row`` of the head's map (as a query or a key) and show its document."""
        token, kind = points.map.point(row)
        self.state.param.update(token=token, token_kind=kind, doc=self.data.doc_of(token))


def _title_text(points: HeadPoints, shown: int) -> str:
    return f"L{points.layer}H{points.head} · {points.method} {points.dims}D · {shown:,} points"


def _title(points: HeadPoints, shown: int) -> pn.pane.HTML:
    return pn.pane.HTML(f"<b class='qk-head-title'>{html.escape(_title_text(points, shown))}</b>")
