"""The Panel app: one tab per view over one store, and one :class:`SessionState` per browser session.

The store's data lives in a :class:`DashboardData` shared by all sessions; each view is built from
it and the session's state the first time its tab opens.
"""

from __future__ import annotations

import html

import panel as pn
import param

from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.link import follow_and_keep
from qkscale.dashboard.state import SINGLE_HEAD, SessionState
from qkscale.dashboard.views.aggregate import AggregateView
from qkscale.dashboard.views.base import View
from qkscale.dashboard.views.image import ImageView
from qkscale.dashboard.views.matrix import MatrixView
from qkscale.dashboard.views.metrics import MetricsView
from qkscale.dashboard.views.sentence import SentenceView
from qkscale.dashboard.views.single import SingleHeadView

TABS: tuple[tuple[str, type[View]], ...] = (
    ("Matrix", MatrixView),
    (SINGLE_HEAD, SingleHeadView),
    ("Sentence", SentenceView),
    ("Aggregate", AggregateView),
    ("Image", ImageView),
    ("Metrics", MetricsView),
)
URL_PARAMETERS = ("layer", "head", "method", "dims", "colour", "doc")  # of the session state; and ``tab``


class Dashboard(pn.viewable.Viewer):
    """One browser session's dashboard: a header and the tabs of the views that apply to the store."""

    tab = param.Integer(default=0, doc="the open tab's position, as links carry it (?tab=1: the single view)")

    def __init__(self, data: DashboardData, state: SessionState | None = None, **params):
        self.data = data
        self.state = state or SessionState.of(data)
        self.views = {name: view for name, view in TABS if view.available(data)}
        self.names = list(self.views)
        self.opened: dict[str, View] = {}
        super().__init__(**params)
        self.tabs = pn.Tabs(
            *((name, pn.Column(sizing_mode="stretch_width")) for name in self.names),
            dynamic=True,
            sizing_mode="stretch_width",
        )
        self.tabs.param.watch(lambda event: setattr(self, "tab", event.new), "active")
        self.state.param.watch(lambda event: self._open(event.new), "tab")
        self._open(self.state.tab)

    def __panel__(self):
        store = self.data.store
        where = " · ".join(html.escape(str(text)) for text in (store.path, store.manifest["model"]["source"]))
        size = f"{store.n_tokens:,} tokens · {len(store.layers)} layers x {store.n_heads} heads"
        header = pn.pane.HTML(f"<b>qkscale</b> · {where} · {size}", css_classes=["qk-header"])
        self._sync_url()
        self._show_tab()
        return pn.Column(header, self.tabs, sizing_mode="stretch_width")

    def _open(self, name: str) -> None:
        if name in self.names:
            self.tab = self.names.index(name)

    @param.depends("tab", watch=True)
    def _show_tab(self) -> None:
        """Open tab ``tab``, building its view the first time (a session builds only what it shows)."""
        if not 0 <= self.tab < len(self.names):
            return
        name = self.names[self.tab]
        if name not in self.opened:
            self.opened[name] = self.views[name](self.data, self.state)
            self.tabs[self.tab].objects = [self.opened[name]]
        self.tabs.active = self.tab
        self.state.tab = name

    def _sync_url(self) -> None:
        """Open the view the URL names (``?tab=1&layer=3&head=0&method=umap``) and keep it there: links open it."""
        if pn.state.location is not None:
            follow_and_keep(pn.state.location, [(self.state, URL_PARAMETERS), (self, ("tab",))])


def load_extensions() -> None:
    """Load the JavaScript the views need (once per server, or once in a notebook)."""
    from qkscale.dashboard.plotting import hv

    pn.extension("tabulator")
    hv.extension("bokeh", logo=False)


def app(store, data: DashboardData | None = None) -> Dashboard:
    """The dashboard of ``store`` (a path or Store) as a Panel viewable: ``.servable()``, or show it in a notebook."""
    load_extensions()
    return Dashboard(data or DashboardData(store))
