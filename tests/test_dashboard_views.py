"""The dashboard's Panel views without a browser: each built alone from (data, state), and the app's tabs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import save_tiny_vision

import qkscale
from qkscale.dashboard.cache import LRUCache
from qkscale.dashboard.data import DashboardData

pn = pytest.importorskip("panel")

from qkscale.dashboard.app import TABS, Dashboard  # noqa: E402 - after the panel check
from qkscale.dashboard.state import SINGLE_HEAD, SessionState  # noqa: E402
from qkscale.dashboard.views.aggregate import AggregateView  # noqa: E402
from qkscale.dashboard.views.attention import AttentionPanel  # noqa: E402
from qkscale.dashboard.views.image import ImageView  # noqa: E402
from qkscale.dashboard.views.matrix import MatrixView  # noqa: E402
from qkscale.dashboard.views.metrics import MetricsView  # noqa: E402
from qkscale.dashboard.views.search import TokenSearch  # noqa: E402
from qkscale.dashboard.views.sentence import SentenceView  # noqa: E402
from qkscale.dashboard.views.single import SingleHeadView  # noqa: E402
from qkscale.dashboard.views.token import TokenDetails  # noqa: E402


@pytest.fixture(scope="module")
def data(dashboard_store) -> DashboardData:
    return DashboardData(dashboard_store)


@pytest.fixture
def state(data) -> SessionState:
    return SessionState.of(data)


def _message(view) -> str:
    assert isinstance(view, pn.pane.Alert), view
    return view.object


def _render(view) -> None:
    """Build ``view``'s Bokeh models as a browser would get them: every shown part is drawn, none fails."""
    root = pn.panel(view).get_root()
    assert root is not None


def map_row(points, token: int, kind: str) -> int:
    """The row of token ``token``'s query or key in the head's point map (a scan: tests only)."""
    columns = points.map.points.columns
    found = (np.asarray(columns["token"]) == token) & (np.asarray(columns["kind"]) == "qk".index(kind))
    return int(np.flatnonzero(found)[0])


# -- each view alone ------------------------------------------------------------------------------------
@pytest.mark.parametrize("view", [MatrixView, SingleHeadView, SentenceView, AggregateView, MetricsView])
def test_each_view_is_built_alone_from_data_and_state(view, data, state):
    state.param.update(layer=1, head=0, token=int(data.store.doc_rows(2).start) + 3, doc=2)
    _render(view(data, state))


def test_attention_panel_follows_the_token_or_the_document(data, state):
    by_token, by_doc = AttentionPanel(data, state, follow="token"), AttentionPanel(data, state, follow="doc")
    assert by_token._of_token().objects == []  # nothing clicked: nothing drawn
    state.param.update(token=int(data.store.doc_rows(3).start) + 4, doc=5, layer=2, head=5)
    assert "qk-attention" in by_token._of_token().css_classes
    title, plot = by_doc._of_doc()
    assert title.object == "<b>L2H5</b>, document 5" and "qk-attention" in plot.css_classes
    state.sentence_style = "heatmap"
    assert type(by_doc._of_doc()[1].object).__name__ == "HeatMap"


def test_token_details_escape_the_token(data, state):
    details = TokenDetails(data, state)
    assert "Click a point" in details._details().object
    token = int(data.store.doc_rows(3).start) + 4
    state.param.update(token=token, token_kind="k", layer=2, head=5)
    heading, text = details._details()
    assert "as a key, L2H5" in heading.object and "is attended most by" in heading.object
    assert "qk-sentence" in text.object and "outline" in text.object


def test_search_runs_on_every_change_of_text_or_mode(data, state, dashboard_store):
    search = TokenSearch(data, state)
    assert "type a token" in search._summary().object
    state.search_text = "the"
    assert len(search.matches.ids) == (dashboard_store.tokens["token"] == "the").sum()
    assert "tokens match &#x27;the&#x27; (exact)" in search._summary().object  # escaped, as all store text
    state.search_mode, state.search_text = "regex", "(("
    assert search.matches is None and "does not compile" in search.error
    assert "does not compile" in _message(search._summary())
    state.search_text = ""
    assert search.matches is None and not search.error and len(search.match_ids()) == 0


def test_sentence_view_finds_documents_by_their_words(data, state):
    view = SentenceView(data, state)
    found = pn.pane.HTML("")
    state.token = 5
    text = data.store.documents["text"].iat[7]
    view._find(text[:40].upper(), found)
    assert state.doc <= 7 and state.token == -1 and "documents contain it" in found.object
    view._find("no such words in any document", found)
    assert found.object == "no document contains it"
    view._show((3, 2))
    assert (state.layer, state.head) == (3, 2)


def test_aggregate_and_matrix_clicks_open_heads(data, state):
    aggregate = AggregateView(data, state)
    assert "Click a head" in aggregate._detail().object
    state.aggregate_head = "L2H4"
    bars, button = aggregate._detail()
    button.clicks += 1
    assert (state.layer, state.head, state.tab) == (2, 4, SINGLE_HEAD)
    MatrixView(data, state)._open((3, 1))
    assert (state.layer, state.head) == (3, 1)


# -- the attention cache ----------------------------------------------------------------------------------
def test_one_click_computes_the_attention_once(dashboard_store):
    store = qkscale.open_store(dashboard_store.path)  # its own Store object: the session fixture stays as it is
    calls = []
    computed = store.attention
    store.attention = lambda *key: calls.append(key) or computed(*key)  # a real store, counted
    data = DashboardData(store)
    asked = []  # which views asked for the clicked token's attention
    token_attention = data.token_attention
    data.token_attention = lambda *args: asked.append(args) or token_attention(*args)
    state = SessionState.of(data, layer=1, head=0)
    board = Dashboard(data, state)
    pn.panel(board).get_root()
    state.open_head(1, 0)
    view = board.opened[SINGLE_HEAD]
    points = data.head_points(1, 0, state.method, state.dims)
    assert not calls
    view.select_point(points, map_row(points, 45, "q"))  # the click: overlay, details, attention panel redraw
    doc = data.doc_of(45)
    assert len(asked) >= 3 and calls == [(doc, 1, 0)]
    state.param.update(hide_special=True, sentence_style="heatmap", top_k=3)  # derived from the same attention
    state.tab = "Sentence"  # its document is the clicked token's: the same attention again
    assert calls.count((doc, 1, 0)) == 1


def test_attention_is_shared_read_only_and_bounded(data):
    first = data.attention(4, 1, 2)
    assert data.attention(4, 1, 2)[0] is first[0] and not first[0].flags.writeable
    with pytest.raises(ValueError):
        first[0][0, 0] = 1.0
    cache = LRUCache(2)
    for key in "abc":
        cache.get(key, lambda key=key: key.upper())
    assert len(cache) == 2 and cache.get("a", lambda: "again") == "again"


def test_sessions_asking_together_compute_once():
    cache, calls, started = LRUCache(4), [], threading.Barrier(8)

    def compute():
        calls.append(1)
        threading.Event().wait(0.05)
        return np.ones(3)

    def ask():
        started.wait()
        cache.get("doc", compute)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


# -- the app: tabs, state flowing between views, messages -----------------------------------------------
def test_app_state_flows_between_views(data, dashboard_store):
    board = Dashboard(data)
    board.__panel__()
    state = board.state
    assert state.method == "pca" and (state.layer, state.head) == (0, 0)  # the method covering most heads
    assert state.param.method.objects == ["pca", "umap"]
    state.open_head(3, 7)
    assert (state.layer, state.head, board.tabs.active) == (3, 7, 1)
    view = board.opened[SINGLE_HEAD]
    view.step(1, 1)
    assert (state.layer, state.head) == (4, 8)
    view.step(2, 4)
    assert (state.layer, state.head) == (0, 0)  # wraps around
    points = data.head_points(1, 0, "umap", 2)
    state.param.update(layer=1, head=0)
    view.select_point(points, map_row(points, 30, "k"))
    assert state.token == 30 and state.token_kind == "k"
    assert state.doc == int(dashboard_store.tokens["doc"].iat[30])
    state.search_text = "the"
    assert len(view.search.matches.ids) == (dashboard_store.tokens["token"] == "the").sum()
    state.search_mode, state.search_text = "regex", "(("
    assert view.search.matches is None and "does not compile" in view.search.error


def test_tabs_are_registered_by_name_and_follow_the_state(data):
    board = Dashboard(data)
    board.__panel__()
    assert board.tabs._names == ["Matrix", SINGLE_HEAD, "Sentence", "Aggregate", "Metrics"]  # no image tab
    assert [name for name, _ in TABS] == ["Matrix", SINGLE_HEAD, "Sentence", "Aggregate", "Image", "Metrics"]
    assert board.state.tab == "Matrix" and isinstance(board.opened["Matrix"], MatrixView)
    assert "Sentence" not in board.opened  # built the first time it opens
    board.tabs.active = 2  # a click on its title
    assert board.state.tab == "Sentence" and isinstance(board.opened["Sentence"], SentenceView)
    board.tab = 1  # e.g. ?tab=1 in a link
    assert board.state.tab == SINGLE_HEAD and board.tabs.active == 1


def test_missing_projection_and_head_are_messages(data, dashboard_store, state):
    view = SingleHeadView(data, state)
    state.param.update(method="umap", layer=4, head=3)
    assert f"qkscale project {dashboard_store.path} --method umap --dims 2 --layers 4 --heads 3" in _message(
        view._embedding()
    )
    state.param.update(method="pca", layer=1, head=0, show=[])
    assert "choose queries, keys or both" in _message(view._embedding())
    state.open_head(99, 0)  # not a stored head: nothing changes
    assert state.layer == 1
    state.param.update(layer=99)  # e.g. from a hand-edited URL
    assert "layer 99 head 0 is not in this store (layers 0-5; heads 0-11)" in _message(view._embedding())


def test_store_without_projections_or_metrics_says_which_command(builtin_store):
    data = DashboardData(builtin_store)
    state = SessionState.of(data)
    assert f"qkscale project {builtin_store.path}" in _message(MatrixView(data, state)._matrix())
    assert f"qkscale metrics {builtin_store.path}" in _message(MetricsView(data, state)._table())
    assert "qkscale metrics" in _message(AggregateView(data, state)._heatmap())


def test_image_view_on_a_vision_store(tmp_path):
    from qkscale.dashboard import image

    model = save_tiny_vision(tmp_path / "vit", "vit", True)
    store = qkscale.extract(str(model), "builtin-images", tmp_path / "store", limit_docs=3, progress=False)
    data = DashboardData(store)
    board = Dashboard(data)
    board.__panel__()
    assert "Image" in board.tabs._names
    grid = image.patch_grid(store.preprocessing)
    assert grid == (4, 4)
    assert image.patch_at(grid, 2.5, -1.5) == (1, 2) and image.patch_at(grid, 5, -1) is None
    state = SessionState.of(data, doc=1)
    view = ImageView(data, state)
    tokens = data.document_tokens(1)
    view.pick_patch(tokens, 1, grid, 2.5, -1.5)
    assert state.token == int(tokens["id"].iat[1 + 1 * 4 + 2])
    shown = view._image()
    assert "attention" in shown[0].object
    _render(view)


def test_the_url_opens_the_view_it_names_and_follows_the_view_shown(data, state):
    from panel.io.location import Location

    from qkscale.dashboard.app import URL_PARAMETERS
    from qkscale.dashboard.link import follow_and_keep

    board = Dashboard(data, state)
    location = Location(search="?tab=1&layer=2&head=3&method=pca&dims=2&colour=nowhere")
    follow_and_keep(location, [(state, URL_PARAMETERS), (board, ("tab",))])
    assert (board.tab, state.layer, state.head, state.method) == (1, 2, 3, "pca")
    assert state.colour == SessionState.param.colour.default  # a value the store cannot name: the default stays
    state.head = 5
    assert location.query_params["head"] == 5 and location.query_params["layer"] == 2

    def choose(name: str, values) -> None:
        for value in values:
            setattr(state, name, value)

    # Two of the server's threads change the view at once: no older URL ever comes back into the state.
    threads = [
        threading.Thread(target=choose, args=("head", [0, 1, 2, 3] * 50 + [7])),
        threading.Thread(target=choose, args=("layer", [0, 1, 3] * 50 + [4])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (state.layer, state.head) == (4, 7)
    assert (location.query_params["layer"], location.query_params["head"]) == (4, 7)


def test_the_embedding_ends_showing_the_state_when_two_threads_change_it_at_once(data, state, monkeypatch):
    """A thread that read the state just before another changed it must not leave its older head shown."""
    view = SingleHeadView(data, state)
    view.__panel__()
    state.param.update(method="pca", dims=2, layer=0, head=0)
    pn.panel(view._embedding).get_root()  # as the tab shows it: redrawn on every change of the state
    reading, other_done = threading.Event(), threading.Event()
    head_points = data.head_points

    def slow_for_the_old_head(layer, head, method, dims):
        if threading.current_thread().name == "changes-layer" and head == 0 and not other_done.is_set():
            reading.set()
            other_done.wait(60)  # the other thread changes the head and draws meanwhile
        return head_points(layer, head, method, dims)

    monkeypatch.setattr(data, "head_points", slow_for_the_old_head)
    changes_layer = threading.Thread(target=lambda: setattr(state, "layer", 4), name="changes-layer")
    changes_layer.start()
    assert reading.wait(60)
    state.head = 7  # drawn at once, in this thread, while the other still draws layer 4 head 0
    other_done.set()
    changes_layer.join()
    assert (state.layer, state.head) == (4, 7)
    assert view.live.figure.tags == ["L4H7"] and view.live.drawn.head.points.head == 7
