"""The Panel app: matrix, single-head, sentence, aggregate, image and metrics views over one store.

:class:`Dashboard` holds one session's state (the open head, the clicked token, the search) as
parameters; every view redraws from them. The store's data lives in a :class:`DashboardData`
shared by all sessions.
"""

from __future__ import annotations

import contextlib
import html
import traceback
from collections.abc import Callable

import numpy as np
import panel as pn
import param

from qkscale.dashboard import aggregate, image, matrix, sentence, single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.tokens import SEARCH_MODES, SearchResult
from qkscale.errors import QKScaleError

SINGLE_HEAD_TAB = 1  # tabs: Matrix, Single head, Sentence, Aggregate, (Image,) Metrics
URL_PARAMETERS = ("tab", "layer", "head", "method", "dims", "colour", "doc")
NO_MATCHES = np.empty(0, np.int64)


def _guarded(view: Callable) -> Callable:
    """Run a view builder; a user error or a failure becomes a message in the UI, never a crashed session."""

    def build(self: Dashboard, *args, **kwargs):
        try:
            return view(self, *args, **kwargs)
        except QKScaleError as exc:
            return pn.pane.Alert(str(exc), alert_type="warning", css_classes=["qk-message"])
        except Exception as exc:  # noqa: BLE001 - a session must survive anything a view raises
            traceback.print_exc()
            return pn.pane.Alert(f"could not draw this view: {exc}", alert_type="danger", css_classes=["qk-message"])

    build.__name__ = view.__name__
    return build


class Dashboard(pn.viewable.Viewer):
    """One browser session's dashboard over a shared :class:`DashboardData`."""

    layer = param.Integer(default=0)
    head = param.Integer(default=0)
    method = param.Selector(default="umap", objects=["umap"])
    dims = param.Selector(default=2, objects=[2, 3])
    colour = param.Selector(default="query / key", objects=list(single.COLOURINGS))
    show = param.ListSelector(default=["q", "k"], objects=["q", "k"])
    ordering = param.Selector(default=matrix.ORDERINGS[0], objects=list(matrix.ORDERINGS))
    label_metric = param.Selector(default=None, objects=[None])
    token = param.Integer(default=-1, doc="clicked token id (row of Store.tokens), -1 for none")
    token_kind = param.Selector(default="q", objects=["q", "k"])
    doc = param.Integer(default=-1, doc="document of the sentence views")
    top_k = param.Integer(default=5, bounds=(1, 50))
    hide_special = param.Boolean(default=False, doc="drop special tokens and renormalise attention")
    sentence_style = param.Selector(default="lines", objects=["lines", "heatmap"])
    search_text = param.String(default="")
    search_mode = param.Selector(default="exact", objects=list(SEARCH_MODES))
    search_version = param.Integer(default=0)
    aggregate_head = param.String(default="")
    tab = param.Integer(default=0, doc="the open tab")

    def __init__(self, data: DashboardData, **params):
        self.data = data
        self.store = data.store
        self.matches: SearchResult | None = None
        self._search_error = ""
        super().__init__(**params)
        methods = data.methods() or ["umap"]
        self.param.method.objects = methods
        self.method = methods[0]
        self.param.dims.objects = sorted({int(k.rsplit("-", 1)[1][0]) for k in data.projections()} or {2})
        self.dims = self.param.dims.objects[0]
        metrics = data.metrics
        if metrics is not None:
            names = [c for c in metrics.columns if c not in ("layer", "head", "order", "n_queries")]
            self.param.label_metric.objects = [None, *names]
        first = self._first_projected()
        self.layer, self.head = first
        self.doc = int(data.tokens["doc"].iat[0])
        self.tabs = pn.Tabs(dynamic=True, sizing_mode="stretch_width")

    # -- layout --------------------------------------------------------------------------------
    def __panel__(self):
        builders = [
            ("Matrix", self._matrix_tab),
            ("Single head", self._single_tab),
            ("Sentence", self._sentence_tab),
            ("Aggregate", self._aggregate_tab),
            *([("Image", self._image_tab)] if self.store.modality == "image" else []),
            ("Metrics", self._metrics_tab),
        ]
        self._builders = [build for _, build in builders]
        self.tabs[:] = [(name, pn.Column(sizing_mode="stretch_width")) for name, _ in builders]
        header = pn.pane.HTML(
            f"<b>qkscale</b> · {html.escape(str(self.store.path))} · {self.store.manifest['model']['source']} · "
            f"{self.store.n_tokens:,} tokens · {len(self.store.layers)} layers x {self.store.n_heads} heads",
            css_classes=["qk-header"],
        )
        self.tabs.param.watch(lambda event: setattr(self, "tab", event.new), "active")
        self._sync_url()
        self._show_tab()
        return pn.Column(header, self.tabs, sizing_mode="stretch_width")

    @param.depends("tab", watch=True)
    def _show_tab(self) -> None:
        """Open tab ``tab``, building its views the first time (a session builds only what it shows)."""
        if not 0 <= self.tab < len(self.tabs):
            return
        page = self.tabs[self.tab]
        if not page.objects:
            page.objects = [self._builders[self.tab]()]
        self.tabs.active = self.tab

    def _sync_url(self) -> None:
        """Keep the view in the URL (``?tab=1&layer=3&head=0&method=umap``): links open the same head."""
        if pn.state.location is None:
            return
        with contextlib.suppress(ValueError):  # a hand-edited URL naming what this store lacks: keep the defaults
            pn.state.location.sync(self, {name: name for name in URL_PARAMETERS})

    def open_head(self, layer: int, head: int) -> None:
        """Show ``layer``/``head`` in the single view."""
        if (layer, head) not in self.data.heads:
            return
        self.param.update(layer=layer, head=head, tab=SINGLE_HEAD_TAB)

    def _first_projected(self) -> tuple[int, int]:
        projected = self.data.projections().get(f"{self.method}-{self.dims}d", [])
        return projected[0] if projected else self.data.heads[0]

    # -- matrix --------------------------------------------------------------------------------
    def _matrix_tab(self):
        controls = pn.Row(
            pn.widgets.Select.from_param(self.param.method, label="projection"),
            pn.widgets.Select.from_param(self.param.dims, label="dims"),
            pn.widgets.Select.from_param(self.param.ordering, label="order"),
            pn.widgets.Select.from_param(self.param.label_metric, label="label with metric"),
            css_classes=["qk-matrix-controls"],
        )
        return pn.Column(controls, self._matrix_view)  # the first view: in the first page, not deferred

    @param.depends("method", "dims", "ordering", "label_metric")
    @_guarded
    def _matrix_view(self):
        key = f"{self.method}-{self.dims}d"
        projected = set(self.data.projections().get(key, []))
        if not projected:
            raise QKScaleError(
                f"this store has no {self.method} {self.dims}D projections yet; make them with "
                f"`qkscale project {self.store.path} --method {self.method} --dims {self.dims}`"
            )
        element, grid = matrix.matrix_element(
            self.store,
            self.data.heads,
            projected,
            self.method,
            self.dims,
            self.ordering,
            self.data.metrics,
            self.label_metric,
        )
        pane = _plot(element, css_classes=["qk-matrix"])
        tap = _tap_stream(element)
        tap.add_subscriber(lambda x, y: self._open_tile(grid, x, y))
        n = len(grid)
        note = pn.pane.HTML(f"<span class='qk-count'>{n} heads</span>, {len(projected)} with a {key} projection")
        return pn.Column(note, pane)

    def _open_tile(self, grid, x, y) -> None:
        if x is None or y is None:
            return
        head = matrix.head_at(grid, x, y)
        if head is not None:
            self.open_head(*head)

    # -- single head -----------------------------------------------------------------------------
    def _single_tab(self):
        stored = {f"L{layer}": layer for layer in self.store.layers}
        nav = pn.Row(
            pn.widgets.Select.from_param(self.param.layer, options=stored, label="layer", width=90),
            pn.widgets.Select.from_param(
                self.param.head, options=list(range(self.store.n_heads)), label="head", width=80
            ),
            self._button("◀ head", lambda: self._step(0, -1)),
            self._button("head ▶", lambda: self._step(0, 1)),
            self._button("▲ layer", lambda: self._step(-1, 0)),
            self._button("layer ▼", lambda: self._step(1, 0)),
        )
        view = pn.Row(
            pn.widgets.Select.from_param(self.param.method, label="projection", width=110),
            pn.widgets.RadioButtonGroup.from_param(self.param.dims, label="dims"),
            pn.widgets.Select.from_param(self.param.colour, label="colour by", width=150),
            pn.widgets.CheckButtonGroup.from_param(
                self.param.show, label="show", options={"queries": "q", "keys": "k"}
            ),
        )
        search = pn.Row(
            pn.widgets.TextInput.from_param(
                self.param.search_text, label="search tokens", placeholder="e.g. the, ^un, ##ing"
            ),
            pn.widgets.RadioButtonGroup.from_param(self.param.search_mode, label="mode"),
            self._search_summary,
        )
        links = pn.Row(
            pn.widgets.IntInput.from_param(self.param.top_k, label="top-k lines", width=100),
            pn.widgets.Checkbox.from_param(self.param.hide_special, label="hide special tokens (renormalise)"),
            pn.widgets.RadioButtonGroup.from_param(self.param.sentence_style, label="attention as"),
        )
        details = pn.Column(_lazy(self._token_details), width=520)
        return pn.Column(nav, view, search, links, pn.Row(pn.Column(self._legend, _lazy(self._embedding)), details))

    def _button(self, label: str, action: Callable[[], None]):
        button = pn.widgets.Button(label=label, width=80, css_classes=["qk-nav"])
        button.on_click(lambda event: action())
        return button

    def _step(self, layers: int, heads: int) -> None:
        """Move to the next/previous head or layer among the stored ones (wrapping around)."""
        stored = self.store.layers
        layer_index = (stored.index(self.layer) + layers) % len(stored)
        self.param.update(layer=stored[layer_index], head=(self.head + heads) % self.store.n_heads)

    @param.depends("colour")
    def _legend(self):
        legend = single.COLOURINGS[self.colour].legend()
        return pn.pane.HTML(f"{legend} &nbsp; <span style='color:#666'>hover a point for its token; click it</span>")

    @param.depends("layer", "head", "method", "dims", "colour", "show")
    @_guarded
    def _embedding(self):
        if (self.layer, self.head) not in self.data.heads:
            raise QKScaleError(
                f"layer {self.layer} head {self.head} is not in this store (layers "
                f"{', '.join(map(str, self.store.layers))}; heads 0-{self.store.n_heads - 1})"
            )
        if not self.data.has_projection(self.layer, self.head, self.method, self.dims):
            raise QKScaleError(
                f"layer {self.layer} head {self.head} has no {self.method} {self.dims}D projection; make it with "
                f"`qkscale project {self.store.path} --method {self.method} --dims {self.dims} "
                f"--layers {self.layer} --heads {self.head}`"
            )
        if not self.show:
            raise QKScaleError("choose queries, keys or both to show")
        points = self.data.head_points(self.layer, self.head, self.method, self.dims)
        colouring = single.COLOURINGS[self.colour]
        show = tuple(self.show)
        if self.dims == 3:
            figure = single.embedding_3d(points, show, colouring)
            served = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
            frame = pn.pane.HTML(single.figure_page(figure, served), css_classes=["qk-embedding-3d"])
            return pn.Column(self._head_title(points, len(single.sample_3d(points, show))), frame)
        embedding = single.embedding_2d(points, show, colouring)
        matches = hv_dynamic(lambda **_: single.match_points(points, self._match_ids()), self, ["search_version"])
        overlay = hv_dynamic(
            lambda **_: self._selection_overlay(points), self, ["token", "token_kind", "top_k", "hide_special"]
        )
        tap = _tap_stream(embedding)
        tap.add_subscriber(lambda x, y: self._on_tap(points, show, x, y))
        x_range, y_range = single.extent(points)  # empty overlays must not widen the view
        layers = (embedding * single.matches_layer(matches) * overlay).opts(xlim=x_range, ylim=y_range)
        plot = _plot(layers, css_classes=["qk-embedding"])
        return pn.Column(self._head_title(points, len(single.visible_points(points, show))), plot)

    def _head_title(self, points, shown: int):
        text = f"L{points.layer}H{points.head} · {points.method} {points.dims}D · {shown:,} points"
        return pn.pane.HTML(f"<b class='qk-head-title'>{text}</b>")

    def _match_ids(self) -> np.ndarray:
        return self.matches.ids if self.matches is not None else NO_MATCHES

    def _selection_overlay(self, points):
        row, links = None, None
        if self.token >= 0:
            row = points.point_of(self.token, self.token_kind)
            row = row if row >= 0 else None
            links = self.data.top_links(
                self.token, self.token_kind, self.layer, self.head, self.top_k, self.hide_special
            )
        return single.selection_layer(points, row, links)

    def _on_tap(self, points, show, x, y) -> None:
        if x is None or y is None:
            return
        row = single.nearest_point(points, show, x, y)
        if row is not None:
            self._select_point(points, row)

    def _select_point(self, points, row: int) -> None:
        token = int(points.frame["id"].iat[row])
        self.param.update(
            token=token, token_kind=str(points.frame["kind"].iat[row]), doc=int(self.data.tokens["doc"].iat[token])
        )

    @param.depends("search_text", "search_mode", watch=True)
    def _run_search(self) -> None:
        try:
            self.matches = self.data.search(self.search_text, self.search_mode) if self.search_text else None
            self._search_error = ""
        except QKScaleError as exc:
            self.matches, self._search_error = None, str(exc)
        self.search_version += 1

    @param.depends("search_version")
    def _search_summary(self):
        if self._search_error:
            return pn.pane.Alert(
                self._search_error, alert_type="warning", css_classes=["qk-search-count", "qk-message"]
            )
        if self.matches is None:
            return pn.pane.HTML("<span class='qk-search-count'>type a token to highlight it</span>")
        return pn.pane.HTML(f"<span class='qk-search-count'>{html.escape(self.matches.describe())}</span>")

    @param.depends("token", "token_kind", "layer", "head", "top_k", "hide_special", "sentence_style")
    @_guarded
    def _token_details(self):
        if self.token < 0:
            return pn.pane.HTML("<i>Click a point to see its token in its sentence and what it attends to.</i>")
        doc = int(self.data.tokens["doc"].iat[self.token])
        position = self.token - self.store.doc_rows(doc).start
        texts, weights, positions = self._document_attention(doc)
        where = np.flatnonzero(positions == position)
        shading = None
        if len(where):
            shading = np.zeros(len(texts))
            line = weights[where[0]] if self.token_kind == "q" else weights[:, where[0]]
            shading[positions] = line
        role = "query" if self.token_kind == "q" else "key"
        links = self.data.top_links(self.token, self.token_kind, self.layer, self.head, self.top_k, self.hide_special)
        targets = ", ".join(
            f"{self.data.tokens['token'].iat[int(t)]} ({w:.2f})"
            for t, w in zip(links["id"], links["weight"], strict=True)
        )
        verb = "attends most to" if self.token_kind == "q" else "is attended most by"
        heading = pn.pane.HTML(
            f"<div class='qk-token-title'><b>{html.escape(self.data.describe_token(self.token))}</b> as a {role}, "
            f"L{self.layer}H{self.head}</div><div class='qk-links'>{verb}: {html.escape(targets) or '-'}</div>"
        )
        text = pn.pane.HTML(
            sentence.sentence_html(texts, shading, position, self.token_kind), css_classes=["qk-context"]
        )
        kept = [texts[p] for p in positions]
        selected = int(where[0]) if len(where) else None
        if self.sentence_style == "lines":
            plot = sentence.attention_lines(kept, weights, selected, self.token_kind)
        else:
            plot = sentence.attention_heatmap(kept, weights)
        return pn.Column(heading, text, _plot(plot, css_classes=["qk-attention"]))

    def _document_attention(self, doc: int, layer: int | None = None, head: int | None = None):
        tokens = self.data.document_tokens(doc)
        layer = self.layer if layer is None else layer
        head = self.head if head is None else head
        weights, positions = self.data.attention(doc, layer, head, self.hide_special)
        return tokens["token"].astype(str).tolist(), weights, positions

    # -- sentence ----------------------------------------------------------------------------------
    def _sentence_tab(self):
        docs = self.data.store.documents
        picker = pn.widgets.IntInput.from_param(
            self.param.doc, label="document", start=int(docs["doc"].min()), end=int(docs["doc"].max()), width=140
        )
        finder = pn.widgets.TextInput(label="or type words from a document", placeholder="find a document", width=300)
        found = pn.pane.HTML("", css_classes=["qk-find"])

        def find(event) -> None:
            needle = (event.new or "").strip().casefold()
            if not needle:
                return
            hits = docs.index[docs["text"].str.casefold().str.contains(needle, regex=False)]
            found.object = f"{len(hits):,} documents contain it" if len(hits) else "no document contains it"
            if len(hits):
                self.param.update(doc=int(hits[0]), token=-1)

        finder.param.watch(find, "value")
        controls = pn.Row(
            picker,
            finder,
            found,
            pn.widgets.Checkbox.from_param(self.param.hide_special, label="hide special tokens (renormalise)"),
            pn.widgets.RadioButtonGroup.from_param(self.param.sentence_style, label="attention as"),
        )
        return pn.Column(
            controls, _lazy(self._sentence_text), pn.Row(_lazy(self._model_view), _lazy(self._sentence_head))
        )

    @param.depends("doc")
    @_guarded
    def _sentence_text(self):
        return pn.pane.HTML(
            sentence.sentence_html(self.data.document_tokens(self.doc)["token"].astype(str).tolist(), None, None)
        )

    @param.depends("doc", "hide_special")
    @_guarded
    def _model_view(self):
        by_head = {
            (layer, head): self.data.attention(self.doc, layer, head, self.hide_special)[0]
            for layer, head in self.data.heads
        }
        element, grid = sentence.model_view(by_head)
        tap = _tap_stream(element)
        tap.add_subscriber(lambda x, y: self._pick_sentence_head(grid, x, y))
        return _plot(element, css_classes=["qk-model-view"])

    def _pick_sentence_head(self, grid, x, y) -> None:
        head = matrix.head_at(grid, x, y) if x is not None and y is not None else None
        if head is not None:
            self.param.update(layer=head[0], head=head[1])

    @param.depends("doc", "layer", "head", "hide_special", "sentence_style")
    @_guarded
    def _sentence_head(self):
        texts, weights, positions = self._document_attention(self.doc)
        kept = [texts[p] for p in positions]
        plot = (
            sentence.attention_lines(kept, weights)
            if self.sentence_style == "lines"
            else sentence.attention_heatmap(kept, weights)
        )
        title = pn.pane.HTML(f"<b>L{self.layer}H{self.head}</b>, document {self.doc}")
        return pn.Column(title, _plot(plot))

    # -- aggregate -------------------------------------------------------------------------------------
    def _aggregate_tab(self):
        return pn.Column(_lazy(self._aggregate_view), _lazy(self._aggregate_detail))

    @_guarded
    def _aggregate_view(self):
        profiles = self.store.offset_profiles
        element = aggregate.offset_heatmap(profiles)
        tap = _tap_stream(element)
        tap.add_subscriber(lambda x, y: y is not None and self.param.update(aggregate_head=str(y)))
        return _plot(element)

    @param.depends("aggregate_head")
    @_guarded
    def _aggregate_detail(self):
        if not self.aggregate_head:
            return pn.pane.HTML("<i>Click a head's row to see its profile.</i>")
        label = self.aggregate_head
        layer, head = (int(part) for part in label[1:].split("H"))
        button = pn.widgets.Button(label=f"open {label} in the single view")
        button.on_click(lambda event: self.open_head(layer, head))
        return pn.Column(_plot(aggregate.offset_bars(self.store.offset_profiles, label)), button)

    # -- image -------------------------------------------------------------------------------------------
    def _image_tab(self):
        return pn.Column(
            pn.widgets.IntInput.from_param(self.param.doc, label="image", width=140), _lazy(self._image_view)
        )

    @param.depends("doc", "token", "token_kind", "layer", "head", "hide_special")
    @_guarded
    def _image_view(self):
        grid = image.patch_grid(self.store.preprocessing)
        tokens = self.data.document_tokens(self.doc)
        n_prefix = int((tokens["patch_row"] < 0).sum())
        in_doc = self.token in set(tokens["id"])
        position = self.token - int(tokens["id"].iat[0]) if in_doc else 0  # default: the [CLS] token
        weights, _ = self.data.attention(self.doc, self.layer, self.head, False)
        line = weights[position] if self.token_kind == "q" or not in_doc else weights[:, position]
        patches = line[n_prefix:]
        patch = None
        if position >= n_prefix:
            patch = divmod(position - n_prefix, grid[1])
        element = image.image_view(self.store.thumbnail(self.doc), grid, patches, patch)
        tap = _tap_stream(element)
        tap.add_subscriber(lambda x, y: self._pick_patch(tokens, n_prefix, grid, x, y))
        name = tokens["token"].iat[position]
        title = html.escape(str(tokens["image"].iat[0]))
        caption = pn.pane.HTML(f"<b>{title}</b>: {html.escape(name)}'s attention, L{self.layer}H{self.head}")
        return pn.Column(caption, _plot(element, css_classes=["qk-image"]))

    def _pick_patch(self, tokens, n_prefix, grid, x, y) -> None:
        patch = image.patch_at(grid, x, y) if x is not None and y is not None else None
        if patch is not None:
            self.param.update(token=int(tokens["id"].iat[n_prefix + patch[0] * grid[1] + patch[1]]), token_kind="q")

    # -- metrics -------------------------------------------------------------------------------------------
    @_guarded
    def _metrics_tab(self):
        metrics = self.data.metrics
        if metrics is None:
            raise QKScaleError(
                f"this store has no head metrics yet; compute them with `qkscale metrics {self.store.path}`"
            )
        table = pn.widgets.Tabulator(
            metrics.round(4),
            disabled=True,
            selectable=1,
            show_index=False,
            pagination="local",
            page_size=24,
            css_classes=["qk-metrics"],
        )
        table.on_click(
            lambda event: self.open_head(int(metrics["layer"].iat[event.row]), int(metrics["head"].iat[event.row]))
        )
        return pn.Column(pn.pane.HTML("Click a row to open that head; click a column title to sort."), table)


def _plot(element, **params):
    """A HoloViews pane whose axes are its own (Panel links axes of same-named dimensions by default)."""
    return pn.pane.HoloViews(element, linked_axes=False, **params)


def _lazy(method):
    """A view evaluated only once it is shown (hidden tabs cost nothing until opened)."""
    return pn.param.ParamMethod(method, lazy=True)


def _tap_stream(element):
    from qkscale.dashboard.plotting import hv

    return hv.streams.Tap(source=element, x=None, y=None)


def hv_dynamic(callback, owner: param.Parameterized, names: list[str]):
    """A DynamicMap redrawn whenever one of ``owner``'s parameters ``names`` changes."""
    from qkscale.dashboard.plotting import hv

    return hv.DynamicMap(callback, streams=[hv.streams.Params(owner, names)])


def load_extensions() -> None:
    """Load the JavaScript the views need (once per server, or once in a notebook)."""
    from qkscale.dashboard.plotting import hv

    pn.extension("tabulator")
    hv.extension("bokeh", logo=False)


def app(store, data: DashboardData | None = None) -> Dashboard:
    """The dashboard of ``store`` (a path or Store) as a Panel viewable: ``.servable()``, or show it in a notebook."""
    load_extensions()
    return Dashboard(data or DashboardData(store))
