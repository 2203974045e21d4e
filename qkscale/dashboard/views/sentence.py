"""The sentence view: one document's text, every head's attention for it (the model view), and one head's."""

from __future__ import annotations

import panel as pn
import param

from qkscale.dashboard import matrix, sentence
from qkscale.dashboard.views.attention import AttentionPanel, attention_controls
from qkscale.dashboard.views.base import View, guarded, lazy, on_tap, plot


class SentenceView(View):
    """Document ``state.doc``: pick it by number or by its words; click a head of the model view to show it."""

    def __panel__(self):
        docs = self.data.store.documents
        picker = pn.widgets.IntInput.from_param(
            self.state.param.doc, label="document", start=int(docs["doc"].min()), end=int(docs["doc"].max()), width=140
        )
        finder = pn.widgets.TextInput(label="or type words from a document", placeholder="find a document", width=300)
        found = pn.pane.HTML("", css_classes=["qk-find"])
        finder.param.watch(lambda event: self._find(event.new, found), "value")
        controls = pn.Row(picker, finder, found, *attention_controls(self.state))
        heads = pn.Row(lazy(self._model_view), AttentionPanel(self.data, self.state, follow="doc"))
        return pn.Column(controls, lazy(self._text), heads)

    def _find(self, text: str | None, found: pn.pane.HTML) -> None:
        """Show the first document containing ``text`` (case-insensitive), and how many do."""
        needle = (text or "").strip().casefold()
        if not needle:
            return
        docs = self.data.store.documents
        hits = docs.index[docs["text"].str.casefold().str.contains(needle, regex=False)]
        found.object = f"{len(hits):,} documents contain it" if len(hits) else "no document contains it"
        if len(hits):
            self.state.param.update(doc=int(hits[0]), token=-1)

    @param.depends("state.doc")
    @guarded
    def _text(self):
        return pn.pane.HTML(sentence.sentence_html(self.data.document_texts(self.state.doc), None, None))

    @param.depends("state.doc", "state.hide_special")
    @guarded
    def _model_view(self):
        state = self.state
        by_head = {
            (layer, head): self.data.attention(state.doc, layer, head, state.hide_special)[0]
            for layer, head in self.data.heads
        }
        element, grid = sentence.model_view(by_head)
        on_tap(element, lambda x, y: self._show(matrix.head_at(grid, x, y)))
        return plot(element, css_classes=["qk-model-view"])

    def _show(self, head: tuple[int, int] | None) -> None:
        if head is not None:
            self.state.param.update(layer=head[0], head=head[1])
