"""One browser session's state: the open head and tab, the clicked token, the search, shared by every view."""

from __future__ import annotations

import param

from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.matrix import ORDERINGS
from qkscale.dashboard.single import COLOURINGS
from qkscale.dashboard.tokens import SEARCH_MODES

SINGLE_HEAD = "Single head"  # the tab that opening a head shows
NOT_METRICS = ("layer", "head", "order", "n_queries")


class SessionState(param.Parameterized):
    """What one session shows; every view reads and sets these parameters, and redraws from them."""

    layer = param.Integer(default=0)
    head = param.Integer(default=0)
    method = param.Selector(default="umap", objects=["umap"])
    dims = param.Selector(default=2, objects=[2, 3])
    colour = param.Selector(default="query / key", objects=list(COLOURINGS))
    show = param.ListSelector(default=["q", "k"], objects=["q", "k"])
    ordering = param.Selector(default=ORDERINGS[0], objects=list(ORDERINGS))
    label_metric = param.Selector(default=None, objects=[None])
    token = param.Integer(default=-1, doc="clicked token id (row of Store.tokens), -1 for none")
    token_kind = param.Selector(default="q", objects=["q", "k"])
    doc = param.Integer(default=-1, doc="document of the sentence views")
    top_k = param.Integer(default=5, bounds=(1, 50))
    hide_special = param.Boolean(default=False, doc="drop special tokens and renormalise attention")
    sentence_style = param.Selector(default="lines", objects=["lines", "heatmap"])
    search_text = param.String(default="")
    search_mode = param.Selector(default="exact", objects=list(SEARCH_MODES))
    aggregate_head = param.String(default="", doc="the aggregate view's clicked head, e.g. 'L3H0'")
    tab = param.String(default="", doc="the name of the open tab ('': the first)")
    heads = param.List(default=[], item_type=tuple, doc="every stored (layer, head)")

    @classmethod
    def of(cls, data: DashboardData, **params) -> SessionState:
        """A new session's state over ``data``: the projection covering most heads, its first head, document 0."""
        state = cls(heads=list(data.heads), doc=data.first_doc)
        methods = data.methods() or ["umap"]
        state.param.method.objects = methods
        state.param.dims.objects = sorted({int(k.rsplit("-", 1)[1][0]) for k in data.projections()} or {2})
        if data.metrics is not None:
            names = [c for c in data.metrics.columns if c not in NOT_METRICS]
            state.param.label_metric.objects = [None, *names]
        state.param.update(method=methods[0], dims=state.param.dims.objects[0])
        projected = data.projections().get(f"{state.method}-{state.dims}d", [])
        state.layer, state.head = projected[0] if projected else data.heads[0]
        state.param.update(**params)
        return state

    def open_head(self, layer: int, head: int) -> None:
        """Show ``layer``/``head`` in the single view (a head this store lacks changes nothing)."""
        if (layer, head) in self.heads:
            self.param.update(layer=layer, head=head, tab=SINGLE_HEAD)
