"""The clicked token: its sentence shaded by its attention, its strongest links, and its document's attention."""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from qkscale.dashboard import sentence
from qkscale.dashboard.data import attention_line
from qkscale.dashboard.views.attention import AttentionPanel
from qkscale.dashboard.views.base import View, guarded, lazy


class TokenDetails(View):
    """What ``state.token`` attends to (as a query) or is attended by (as a key) in ``state``'s head."""

    def __panel__(self):
        return pn.Column(lazy(self._details), AttentionPanel(self.data, self.state, follow="token"), width=520)

    @param.depends("state.token", "state.token_kind", "state.layer", "state.head", "state.top_k", "state.hide_special")
    @guarded
    def _details(self):
        state, data = self.state, self.data
        if state.token < 0:
            return pn.pane.HTML("<i>Click a point to see its token in its sentence and what it attends to.</i>")
        doc = data.doc_of(state.token)
        texts = data.document_texts(doc)
        weights, positions, row = data.token_attention(state.token, state.layer, state.head, state.hide_special)
        shading = None
        if row is not None:
            shading = np.zeros(len(texts))
            shading[positions] = attention_line(weights, row, state.token_kind)
        links = data.top_links(state.token, state.token_kind, state.layer, state.head, state.top_k, state.hide_special)
        targets = ", ".join(
            f"{data.token_text(int(t))} ({w:.2f})" for t, w in zip(links["id"], links["weight"], strict=True)
        )
        role, verb = ("query", "attends most to") if state.token_kind == "q" else ("key", "is attended most by")
        heading = pn.pane.HTML(
            f"<div class='qk-token-title'><b>{html.escape(data.describe_token(state.token))}</b> as a {role}, "
            f"L{state.layer}H{state.head}</div><div class='qk-links'>{verb}: {html.escape(targets) or '-'}</div>"
        )
        position = state.token - data.store.doc_rows(doc).start
        text = sentence.sentence_html(texts, shading, position, state.token_kind)
        return pn.Column(heading, pn.pane.HTML(text, css_classes=["qk-context"]))
