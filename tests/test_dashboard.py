"""The dashboard's logic: tokens, search, head points, attention, matrix and sentence builders, `qkscale serve` errors.

The Panel views without a browser live in test_dashboard_views.py, the real browser in test_dashboard_browser.py.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qkscale.dashboard import matrix, sentence, single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.embedding import Head, LiveEmbedding
from qkscale.dashboard.tokens import SearchError, context_text
from qkscale.maps.thumbnail import thumbnail_path
from qkscale.store.kinds import token_kinds

pytest.importorskip("panel")


@pytest.fixture(scope="module")
def data(dashboard_store) -> DashboardData:
    return DashboardData(dashboard_store)


@pytest.fixture(scope="module")
def tokens(dashboard_store) -> pd.DataFrame:
    """The whole token table, read the small-store way (the oracle the dashboard's lookups are checked against)."""
    return dashboard_store.tokens


# -- tokens and search ----------------------------------------------------------------------------
def test_token_kinds_of_wordpiece_tokens(tokens):
    kinds = pd.Series(np.asarray(token_kinds(tokens)), index=tokens.index)
    assert (kinds[tokens["is_special"]] == "special").all()
    assert (kinds[tokens["token"].isin([",", ".", "(", ")"])] == "punctuation").all()
    pieces = tokens["token"].str.startswith("##")
    assert pieces.any() and (kinds[pieces] == "subword").all()
    assert (kinds[tokens["token"].isin(["the", "of"])] == "word").all()


def test_token_kinds_of_byte_level_bpe_tokens():
    tokens = pd.DataFrame(
        {
            "token": ["<|endoftext|>", "The", "Ġquick", "ening", "Ġ,", "Ġfox"],
            "position": [0, 1, 2, 3, 4, 5],
            "is_special": [True, False, False, False, False, False],
            "doc": 0,
        }
    )
    assert list(token_kinds(tokens)) == ["special", "subword", "word", "subword", "punctuation", "word"]


def test_search_modes_match_pandas(data, tokens):
    exact = data.search("the", "exact")
    assert np.array_equal(exact.ids, np.flatnonzero(tokens["token"] == "the"))
    assert exact.n_docs == tokens.loc[tokens["token"] == "the", "doc"].nunique()
    folded = data.search("THE", "case-insensitive")
    assert np.array_equal(folded.ids, np.flatnonzero(tokens["token"].str.lower() == "the"))
    regex = data.search(r"^##", "regex")
    assert np.array_equal(regex.ids, np.flatnonzero(tokens["token"].str.startswith("##")))
    assert "match '^##' (regex)" in regex.describe()


def test_bad_searches_are_messages(data):
    with pytest.raises(SearchError, match="does not compile"):
        data.search("((", "regex")
    with pytest.raises(SearchError, match="type a token"):
        data.search("", "exact")
    with pytest.raises(SearchError, match="unknown search mode"):
        data.search("x", "fuzzy")
    assert len(data.search("no-such-token-anywhere", "exact").ids) == 0


def test_token_info_and_texts_match_the_token_table(data, tokens):
    ids = np.array([0, 1, 57, len(tokens) - 1])
    assert list(data.token_texts(ids)) == tokens["token"].iloc[ids].tolist()
    for token in ids.tolist():
        row = tokens.iloc[token]
        doc = tokens[tokens["doc"] == row["doc"]]
        words = doc["token"].tolist()
        info = data.token_info(token)
        assert (info["token"], info["doc"], info["position"]) == (row["token"], row["doc"], row["position"])
        assert info["context"] == context_text(words, int(row["position"]))
    assert context_text(list("abcdefghij"), 5) == "b c d e [f] g h i j"


# -- one head's points ------------------------------------------------------------------------------
def all_points(points, dashboard_store, tokens) -> pd.DataFrame:
    """Every point of a head with its colouring columns, computed the small-store way."""
    projection = dashboard_store.projection(points.layer, points.head, points.method, points.dims)
    ids = projection["token"].to_numpy()
    is_key = (projection["kind"] == "k").to_numpy()
    q = np.linalg.norm(dashboard_store.queries(points.layer, points.head).astype(np.float32), axis=1)
    k = np.linalg.norm(dashboard_store.keys(points.layer, points.head).astype(np.float32), axis=1)
    frame = projection[["x", "y"]].copy()
    frame["kind"] = pd.Categorical.from_codes(is_key.astype(np.int8), ["q", "k"])
    frame["token_kind"] = token_kinds(tokens)[ids]
    frame["doc_colour"] = pd.Categorical.from_codes(
        (tokens["doc"].to_numpy()[ids] % 10).astype(np.int8), list("0123456789")
    )
    frame["rel_position"] = tokens["rel_position"].to_numpy()[ids].astype(np.float16).astype(np.float32)
    frame["norm"] = np.where(is_key, k[ids], q[ids]).astype(np.float32)
    frame["token"] = ids
    return frame


def test_a_head_map_holds_every_query_and_key_with_its_colours(data, dashboard_store, tokens):
    points = data.head_points(1, 0, "umap", 2)
    n = dashboard_store.n_tokens
    assert points.n_tokens == n and points.n_points == 2 * n
    columns = points.map.points.columns
    assert len(columns["x"]) == 2 * n and columns["token"].dtype == np.uint32
    assert sum(c.dtype.itemsize for c in columns.values()) <= 24  # bytes a point
    expected = all_points(points, dashboard_store, tokens).sort_values(["kind", "token"], kind="stable")
    got = pd.DataFrame({name: np.asarray(values) for name, values in columns.items()})
    got = got.assign(kind=pd.Categorical.from_codes(got["kind"].astype(np.int8), ["q", "k"]))
    got = got.sort_values(["kind", "token"], kind="stable")
    np.testing.assert_array_equal(got["x"], expected["x"])
    np.testing.assert_array_equal(got["token_kind"], expected["token_kind"].cat.codes)
    np.testing.assert_array_equal(got["doc_colour"], expected["doc_colour"].cat.codes)
    np.testing.assert_allclose(got["rel_position"].astype(np.float32), expected["rel_position"])
    np.testing.assert_allclose(got["norm"], expected["norm"], rtol=1e-5)


def view_ranges(points, zoom: float, centre: tuple[float, float] = (0.5, 0.5)):
    (x0, x1), (y0, y1) = points.x_range, points.y_range
    cx, cy = x0 + centre[0] * (x1 - x0), y0 + centre[1] * (y1 - y0)
    half_x, half_y = (x1 - x0) / 2 / zoom, (y1 - y0) / 2 / zoom
    return (cx - half_x, cx + half_x), (cy - half_y, cy + half_y)


@pytest.mark.parametrize("zoom", [1.0, 3.0, 40.0, 2000.0])
@pytest.mark.parametrize("show", [("q", "k"), ("k",)])
def test_every_view_equals_datashader_over_every_point(data, dashboard_store, tokens, zoom, show):
    """Pyramid (zoomed out) or the window's points (zoomed in): the same aggregate and image as Datashader's."""
    import datashader as ds

    points = data.head_points(1, 0, "umap", 2)
    everything = all_points(points, dashboard_store, tokens)
    everything = everything[everything["kind"].isin(list(show))]
    x_range, y_range = view_ranges(points, zoom, centre=(0.45, 0.55))
    for colouring in single.COLOURINGS.values():
        image, rows = single.shade_view(points.map, show, colouring, x_range, y_range, 300, 200)
        window = single.view_window(points.map, x_range, y_range, 300, 200)
        if window is None:  # zoomed in past the base cells: the canvas asked for
            canvas = ds.Canvas(300, 200, x_range=x_range, y_range=y_range)
        else:  # one pixel per cell of the snapped window
            canvas = ds.Canvas(window.width, window.height, x_range=window.x_range, y_range=window.y_range)
        reduction = ds.count_cat(colouring.column) if colouring.categorical else ds.mean(colouring.column)
        theirs = canvas.points(everything, "x", "y", agg=reduction)
        np.testing.assert_allclose(
            single.shade(theirs, colouring).to_numpy().view(np.uint8).astype(int),
            image.to_numpy().view(np.uint8).astype(int),
            atol=1 if not colouring.categorical else 0,  # means summed in another order
        )
        assert rows.shape == theirs.shape[:2]
    assert (window is None) == (zoom >= 40.0)


@pytest.mark.parametrize("zoom", [1.0, 40.0])
def test_shading_the_occupied_pixels_gives_datashaders_image(data, zoom):
    """Every colouring: the pixels that hold points get Datashader's colour and alpha; the rest stay transparent."""
    import datashader as ds
    import datashader.transfer_functions as tf

    points = data.head_points(1, 0, "umap", 2)
    x_range, y_range = view_ranges(points, zoom, centre=(0.45, 0.55))
    window = single.view_window(points.map, x_range, y_range, 300, 200)
    for colouring in single.COLOURINGS.values():
        if window is None:
            frame = single.window_frame(points.map, x_range, y_range, ("q", "k"))
            canvas = ds.Canvas(300, 200, x_range=x_range, y_range=y_range)
            agg = canvas.points(frame, "x", "y", agg=single._reduction(colouring))
        else:
            agg = single.pyramid_aggregate(points.map, window, ("q", "k"), colouring)
        if colouring.categorical:
            theirs = tf.shade(agg, color_key=colouring.colours, how="eq_hist", min_alpha=80)
        else:
            theirs = tf.shade(agg, cmap=single._palette(colouring.cmap), how="eq_hist")
        ours = single.shade_occupied(agg, colouring)
        theirs_rgba, ours_rgba = (image.to_numpy().view(np.uint8).reshape(*image.shape, 4) for image in (theirs, ours))
        shown = theirs_rgba[..., 3] > 0
        assert 0 < shown.sum() < shown.size
        np.testing.assert_array_equal(ours_rgba[shown], theirs_rgba[shown])
        assert not ours_rgba[~shown].any()
        np.testing.assert_array_equal(ours.coords["x"], theirs.coords["x"])
        np.testing.assert_array_equal(ours.coords["y"], theirs.coords["y"])


def test_every_hovered_pixel_knows_a_shown_point_inside_it(data):
    points = data.head_points(1, 0, "umap", 2)
    for zoom, show, pixels in ((1.0, ("q", "k"), 120), (1.0, ("k",), 120), (8.0, ("q",), 400)):
        x_range, y_range = view_ranges(points, zoom)
        colouring = single.COLOURINGS["query / key"]
        image, rows = single.shade_view(points.map, show, colouring, x_range, y_range, pixels, pixels)
        window = single.view_window(points.map, x_range, y_range, pixels, pixels)
        assert (window is None) == (zoom > 1)
        if window is not None:
            x_range, y_range = window.x_range, window.y_range
        height, width = rows.shape
        ys, xs = np.nonzero(rows >= 0)
        assert len(ys) >= 10  # enough pixels to check (how many lie in the view depends on the fit)
        x, y, kind = (points.map.column(name, rows[ys, xs]) for name in ("x", "y", "kind"))
        assert set(kind.tolist()) <= {["q", "k"].index(k) for k in show}
        pixel_x, pixel_y = (x_range[1] - x_range[0]) / width, (y_range[1] - y_range[0]) / height
        assert np.all(np.floor((x - x_range[0]) / pixel_x) == xs)
        assert np.all(np.floor((y - y_range[0]) / pixel_y) == ys)


def test_live_embedding_draws_the_view_and_reads_only_the_hovered_token(data, tokens):
    points = data.head_points(1, 0, "umap", 2)
    asked = []

    def describe(row):
        asked.append(row)
        return data.hover(points, row)

    live = LiveEmbedding(on_tap=lambda x, y: None)
    colouring = single.COLOURINGS["query / key"]
    live.show(Head(points, ("q", "k"), colouring, describe))
    assert asked == [] and live.figure.visible and live.figure.tags == ["L1H0"]  # drawing reads no token
    assert live.figure.x_range.reset_start == points.x_range[0]
    [image] = live.image.data["image"]
    assert image.shape == live.drawn.rows.shape and (image != 0).any()

    ys, xs = np.nonzero(live.drawn.rows >= 0)
    (x0, x1), (y0, y1) = live.drawn.x_range, live.drawn.y_range
    height, width = live.drawn.rows.shape
    x, y = x0 + (xs[0] + 0.5) * (x1 - x0) / width, y0 + (ys[0] + 0.5) * (y1 - y0) / height
    hovered = live.hovered(x, y)
    row = int(live.drawn.rows[ys[0], xs[0]])
    token = int(points.map.column("token", np.array([row]))[0])
    assert hovered["__index__"] == row and hovered["token"] == tokens["token"].iat[token]
    assert "[" in hovered["context"] and asked == [row]
    assert live.hovered(x1 + 1.0, y1 + 1.0) == {"__index__": -1}

    x_range, y_range = view_ranges(points, 8.0)
    live.zoom_to(x_range, y_range)
    assert live.image.data["dw"][0] == pytest.approx(x_range[1] - x_range[0])

    star, ends = np.array([0.5, 0.25]), np.array([[0.0, 0.0], [1.0, 1.0]])
    live.select(star, ends, np.array([0.75, 0.25]))
    assert list(live.star.data["x"]) == [0.5] and list(live.links.data["x1"]) == [0.0, 1.0]
    assert list(live.links.data["width"]) == [5.5, 2.5]
    live.select(None, np.empty((0, 2)), np.empty(0))
    assert len(live.star.data["x"]) == 0 and len(live.links.data["x0"]) == 0
    live.hide()
    assert not live.figure.visible


def test_a_request_overtaken_by_a_newer_one_never_reaches_the_figure(data):
    """Two of Panel's threads may draw for one session at once; the older drawing must not land last."""
    live = LiveEmbedding(on_tap=lambda x, y: None)
    colouring = single.COLOURINGS["query / key"]
    heads = [Head(data.head_points(0, h, "pca", 2), ("q", "k"), colouring, lambda row: {}) for h in (1, 2)]
    older, newer = (live._ticket("image") for _ in heads)
    applied = []
    live._apply("image", newer, lambda: applied.append("newer"))
    live._apply("image", older, lambda: applied.append("older"))
    assert applied == ["newer"]
    live.show(heads[0])
    live.show(heads[1])
    assert live.figure.tags == ["L0H2"] and live.drawn.head is heads[1] and live.head is heads[1]


def test_nearest_point_respects_shown_kinds(data):
    points = data.head_points(1, 0, "umap", 2)
    key_row = points.row_of(5, "k")
    x, y = (float(v[0]) for v in points.projection.read(np.array([key_row])).values())
    row = points.map.nearest(x, y, ("q", "k"))
    assert (points.map.column("x", np.array([row]))[0], points.map.column("y", np.array([row]))[0]) == (x, y)
    query = points.map.nearest(x, y, ("q",))
    assert points.map.column("kind", np.array([query]))[0] == 0


def test_sample_3d_is_bounded_and_stable(data, dashboard_store):
    points = data.head_points(0, 0, "pca", 2)
    assert len(points.sample(("q", "k"), limit=100)) == 100
    assert np.array_equal(points.sample(("q",), limit=50), points.sample(("q",), limit=50))
    assert (points.sample(("k",), limit=50) >= points.n_tokens).all()
    assert len(points.sample(("q",), limit=10**9)) == dashboard_store.n_tokens
    frame = data.sample_3d(points, ("k",))  # what the 3D view draws: axes, colouring columns, hover text
    assert len(frame) == dashboard_store.n_tokens and (frame["kind"] == "k").all()
    assert set(frame["token_kind"].cat.categories) >= {"special", "word"}
    token = int(frame["token"].iat[7])
    assert frame["hover"].iat[7] == f"{data.token_text(token)} (key)"


# -- attention ----------------------------------------------------------------------------------------
def test_top_links_are_the_strongest_attention_weights(data, dashboard_store):
    doc = 3
    rows = dashboard_store.doc_rows(doc)
    token = rows.start + 4
    weights = dashboard_store.attention(doc, 2, 5)
    links = data.top_links(token, "q", 2, 5, k=3)
    assert np.allclose(links["weight"], np.sort(weights[4])[::-1][:3], atol=1e-6)
    assert list(links["id"] - rows.start) == list(links["position"])
    by_key = data.top_links(token, "k", 2, 5, k=2)
    assert np.allclose(by_key["weight"], np.sort(weights[:, 4])[::-1][:2], atol=1e-6)


def test_hiding_special_tokens_renormalises(data, dashboard_store):
    weights, positions = data.attention(0, 0, 0, hide_special=True)
    special = dashboard_store.token_column("is_special", dashboard_store.doc_rows(0))
    assert len(positions) == (~special).sum() and not special[positions].any()
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-5)


# -- matrix, sentence and model views --------------------------------------------------------------------
def test_tile_grid_and_clicks_round_trip():
    heads = [(layer, head) for layer in (0, 2) for head in range(3)]
    grid = matrix.tile_grid(heads)
    for head, (column, row) in grid.items():
        assert matrix.head_at(grid, column + 0.5, row + 0.5) == head
    assert matrix.head_at(grid, 10.5, 0.5) is None
    images = {h: np.full((4, 4), i, float) for i, h in enumerate(heads)}
    canvas, bounds = matrix.compose_tiles(grid, images, np.nan)
    assert bounds == (0.0, 0.0, 3.0, 2.0)
    assert matrix.tile_pixels(grid) == matrix.THUMBNAIL_PIXELS  # small models: full-size thumbnails
    big = matrix.tile_grid([(layer, head) for layer in range(32) for head in range(32)])
    assert 24 <= matrix.tile_pixels(big) * 32 * (1 + 2 * matrix.GAP) <= 1600 + 32
    assert canvas[1, 1] == images[(0, 0)][0, 0]  # layer 0 on the top row
    assert canvas[-2, 1] == images[(2, 0)][0, 0]


def test_project_writes_thumbnails_and_the_dashboard_only_reads_them(data, dashboard_store):
    path = thumbnail_path(dashboard_store.path, "pca", 2, 0, 0)
    image = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB")).reshape(-1, 3).astype(int)
    blue = (image[:, 2] > image[:, 0] + 40).sum()
    orange = (image[:, 0] > image[:, 2] + 40).sum()
    assert blue > 20 and orange > 20
    before = {p: p.stat().st_mtime_ns for p in dashboard_store.path.rglob("*") if p.is_file()}
    matrix.matrix_image(dashboard_store, data.heads, set(data.projections()["pca-2d"]), "pca", 2)
    data.head_points(0, 0, "pca", 2)
    after = {p: p.stat().st_mtime_ns for p in dashboard_store.path.rglob("*") if p.is_file()}
    assert after == before


def test_matrix_of_every_head_greys_unprojected_ones(data, dashboard_store):
    projected = set(data.projections()["umap-2d"])
    image = matrix.matrix_image(dashboard_store, data.heads, projected, "umap", 2)
    assert len(image.grid) == 72 and len(image.labels) == 72 and image.without_thumbnail == 0
    pixels = image.canvas.reshape(-1, 4)
    greys = (pixels[:, :3] == matrix.MISSING_TILE[:3]).all(axis=1).sum()
    tile_area = matrix.tile_pixels(image.grid) ** 2
    assert greys == (72 - len(projected)) * tile_area  # every unprojected head is one grey tile, no more
    assert data.matrix("umap", 2, "layer / head", None) is data.matrix("umap", 2, "layer / head", None)  # shared
    figure = matrix.matrix_figure(image, lambda x, y: None)
    assert figure.x_range.end == image.bounds[2] and "qk-matrix" in figure.css_classes
    ordered = matrix.ordered_heads(data.heads, "head similarity", data.metrics)
    assert sorted(ordered) == sorted(data.heads) and ordered != sorted(data.heads)
    labels = matrix.metric_label(data.metrics, "entropy")
    assert labels[(0, 0)].startswith(" entropy ")


def test_sentence_html_escapes_and_marks_the_token():
    text = sentence.sentence_html(["<b>", "x"], np.array([0.2, 0.8]), 1)
    assert "&lt;b&gt;" in text and "<b>" not in text and "outline" in text


def test_model_view_has_a_tile_per_head(data):
    by_head = {h: data.attention(2, *h)[0] for h in data.heads}
    element, grid = sentence.model_view(by_head)
    assert len(grid) == len(data.heads)
    assert sentence.attention_lines(["a", "b"], np.array([[1.0, 0.0], [0.5, 0.5]]), 0) is not None


# -- `qkscale serve` -------------------------------------------------------------------------------------
def test_serve_rejects_bad_input(tmp_path, run_cli, dashboard_store):
    code, _, err = run_cli("serve", tmp_path / "nowhere")
    assert code == 2 and err.strip() == f"qkscale: error: store {tmp_path / 'nowhere'} does not exist"
    code, _, err = run_cli("serve", dashboard_store.path, "--port", "70000")
    assert code == 2 and "not a TCP port" in err and len(err.strip().splitlines()) == 1


def test_warm_up_compiles_a_colouring_once():
    single.warm_up("norm")
    assert "norm" in single._warmed
    single.warm_up_in_background("norm")  # already done: no thread
    assert not [t for t in threading.enumerate() if t.name == "qkscale-warm-up-norm"]


def test_serving_compiles_the_default_drawing_before_the_port_opens(dashboard_store):
    from qkscale.dashboard import server
    from qkscale.dashboard.state import SessionState

    data = server.prepare(dashboard_store.path)
    assert data.store.path == dashboard_store.path
    assert SessionState.param.colour.default in single._warmed  # no first zoom waits for numba
