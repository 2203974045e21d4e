"""The matrix view: every head's thumbnail on one canvas; a click opens that head."""

from __future__ import annotations

import html

import panel as pn
import param

from qkscale.dashboard import matrix
from qkscale.dashboard.views.base import View, guarded
from qkscale.errors import QKScaleError


class MatrixView(View):
    """Every head in ``state.method``/``state.dims``, ordered by ``state.ordering``, labelled by a metric."""

    def __panel__(self):
        params = self.state.param
        controls = pn.Row(
            pn.widgets.Select.from_param(params.method, label="projection"),
            pn.widgets.Select.from_param(params.dims, label="dims"),
            pn.widgets.Select.from_param(params.ordering, label="order"),
            pn.widgets.Select.from_param(params.label_metric, label="label with metric"),
            css_classes=["qk-matrix-controls"],
        )
        return pn.Column(controls, self._matrix)  # the first view: in the first page, not deferred

    @param.depends("state.method", "state.dims", "state.ordering", "state.label_metric")
    @guarded
    def _matrix(self):
        state, data = self.state, self.data
        key = f"{state.method}-{state.dims}d"
        projected = data.projections().get(key, [])
        if not projected:
            raise QKScaleError(
                f"this store has no {state.method} {state.dims}D projections yet; make them with "
                f"`qkscale project {data.store.path} --method {state.method} --dims {state.dims}`"
            )
        image = data.matrix(state.method, state.dims, state.ordering, state.label_metric)
        figure = matrix.matrix_figure(image, lambda x, y: self._open(matrix.head_at(image.grid, x, y)))
        text = f"<span class='qk-count'>{len(image.grid)} heads</span>, "
        text += f"{len(projected)} with a {html.escape(key)} projection"
        if image.without_thumbnail:
            command = f"qkscale project {data.store.path} --method {state.method} --dims {state.dims}"
            text += f"; {image.without_thumbnail} without a thumbnail (pale orange): write them with "
            text += f"<code>{html.escape(command)}</code>"
        return pn.Column(pn.pane.HTML(text), pn.pane.Bokeh(figure))

    def _open(self, head: tuple[int, int] | None) -> None:
        if head is not None:
            self.state.open_head(*head)
