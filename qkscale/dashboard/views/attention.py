"""The attention panel: one document's attention for the session's head, as lines or a heatmap.

The single view shows the clicked token's document (lines from that token only); the sentence
view shows ``state.doc`` (every line). Both read the attention from :class:`DashboardData`'s cache.
"""

from __future__ import annotations

import numpy as np
import panel as pn
import param

from qkscale.dashboard import sentence
from qkscale.dashboard.state import SessionState
from qkscale.dashboard.views.base import View, guarded, lazy, plot

SHARED = ("state.layer", "state.head", "state.hide_special", "state.sentence_style")


def attention_controls(state: SessionState) -> list:
    """The widgets both attention panels share: hide special tokens, lines or heatmap."""
    return [
        pn.widgets.Checkbox.from_param(state.param.hide_special, label="hide special tokens (renormalise)"),
        pn.widgets.RadioButtonGroup.from_param(state.param.sentence_style, label="attention as"),
    ]


class AttentionPanel(View):
    """A document's ``[T, T]`` attention for ``state``'s head, BertViz-style lines or a heatmap."""

    follow = param.Selector(default="doc", objects=["doc", "token"], constant=True, doc="whose document to show")

    def __panel__(self):
        return lazy(self._of_token if self.follow == "token" else self._of_doc)

    @param.depends("state.token", "state.token_kind", *SHARED)
    @guarded
    def _of_token(self):
        state = self.state
        if state.token < 0:
            return pn.Column()
        weights, positions, row = self.data.token_attention(state.token, state.layer, state.head, state.hide_special)
        return self._draw(self.data.doc_of(state.token), weights, positions, row, state.token_kind)

    @param.depends("state.doc", *SHARED)
    @guarded
    def _of_doc(self):
        state = self.state
        weights, positions = self.data.attention(state.doc, state.layer, state.head, state.hide_special)
        title = pn.pane.HTML(f"<b>L{state.layer}H{state.head}</b>, document {state.doc}")
        return pn.Column(title, self._draw(state.doc, weights, positions))

    def _draw(self, doc: int, weights: np.ndarray, positions: np.ndarray, row: int | None = None, kind: str = "q"):
        texts = self.data.document_texts(doc)
        kept = [texts[p] for p in positions]
        if self.state.sentence_style == "lines":
            element = sentence.attention_lines(kept, weights, row, kind)
        else:
            element = sentence.attention_heatmap(kept, weights)
        return plot(element, css_classes=["qk-attention"])
