"""The aggregate view: every head's mean attention by relative offset; click a head for its profile."""

from __future__ import annotations

import panel as pn
import param

from qkscale.dashboard import aggregate
from qkscale.dashboard.views.base import View, button, guarded, lazy, on_tap, plot


class AggregateView(View):
    """The offset profiles of ``qkscale metrics``, and the clicked head's (``state.aggregate_head``)."""

    def __panel__(self):
        return pn.Column(lazy(self._heatmap), lazy(self._detail))

    @guarded
    def _heatmap(self):
        element = aggregate.offset_heatmap(self.data.store.offset_profiles)
        on_tap(element, lambda x, y: self.state.param.update(aggregate_head=str(y)))
        return plot(element)

    @param.depends("state.aggregate_head")
    @guarded
    def _detail(self):
        label = self.state.aggregate_head
        if not label:
            return pn.pane.HTML("<i>Click a head's row to see its profile.</i>")
        layer, head = (int(part) for part in label[1:].split("H"))
        bars = plot(aggregate.offset_bars(self.data.store.offset_profiles, label))
        return pn.Column(bars, button(f"open {label} in the single view", lambda: self.state.open_head(layer, head)))
