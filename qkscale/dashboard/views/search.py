"""Token search: the query box, its mode, the count of matches, and the matches the embedding highlights."""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from qkscale.dashboard.tokens import SearchResult
from qkscale.dashboard.views.base import View, message
from qkscale.errors import QKScaleError

NO_MATCHES = np.empty(0, np.int64)


class TokenSearch(View):
    """Runs ``state.search_text`` in ``state.search_mode`` whenever either changes."""

    matches = param.ClassSelector(class_=SearchResult, allow_None=True, doc="the last search's result")
    error = param.String(default="", doc="why the last search could not run")

    @param.depends("state.search_text", "state.search_mode", watch=True)
    def _run(self) -> None:
        state = self.state
        try:
            found = self.data.search(state.search_text, state.search_mode) if state.search_text else None
            self.param.update(matches=found, error="")
        except QKScaleError as exc:
            self.param.update(matches=None, error=str(exc))

    def match_ids(self) -> np.ndarray:
        """The token ids that match (none without a search)."""
        return self.matches.ids if self.matches is not None else NO_MATCHES

    def __panel__(self):
        return pn.Row(
            pn.widgets.TextInput.from_param(
                self.state.param.search_text, label="search tokens", placeholder="e.g. the, ^un, ##ing"
            ),
            pn.widgets.RadioButtonGroup.from_param(self.state.param.search_mode, label="mode"),
            self._summary,
        )

    @param.depends("matches", "error")
    def _summary(self):
        if self.error:
            return message(self.error, css_classes=("qk-search-count", "qk-message"))
        if self.matches is None:
            return pn.pane.HTML("<span class='qk-search-count'>type a token to highlight it</span>")
        return pn.pane.HTML(f"<span class='qk-search-count'>{html.escape(self.matches.describe())}</span>")
