"""The metrics view: one row per head (``qkscale metrics``); a click opens that head."""

from __future__ import annotations

import html

import panel as pn

from qkscale.dashboard.views.base import View, guarded
from qkscale.errors import QKScaleError


class MetricsView(View):
    """The store's head metrics as a sortable table."""

    def __panel__(self):
        return self._table()

    @guarded
    def _table(self):
        metrics = self.data.metrics
        if metrics is None:
            raise QKScaleError(
                f"this store has no head metrics yet; compute them with `qkscale metrics {self.data.store.path}`"
            )
        # Tabulator renders column titles as HTML and reads dots in field names as paths: the
        # store's column names become plain fields and escaped titles.
        fields = {name: f"c{i}" for i, name in enumerate(metrics.columns)}
        table = pn.widgets.Tabulator(
            metrics.round(4).rename(columns=fields),
            titles={field: html.escape(str(name)) for name, field in fields.items()},
            disabled=True,
            selectable=1,
            show_index=False,
            pagination="local",
            page_size=24,
            css_classes=["qk-metrics"],
        )
        table.on_click(
            lambda event: self.state.open_head(
                int(metrics["layer"].iat[event.row]), int(metrics["head"].iat[event.row])
            )
        )
        return pn.Column(pn.pane.HTML("Click a row to open that head; click a column title to sort."), table)
