"""The dashboard's logic: tokens, search, head points, attention, matrix and sentence builders, `qkscale serve` errors.

The Panel views without a browser live in test_dashboard_views.py, the real browser in test_dashboard_browser.py.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qkscale.dashboard import matrix, sentence, single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.thumbnails import thumbnail, thumbnail_path
from qkscale.dashboard.tokens import SearchError, search_tokens, token_kinds

pytest.importorskip("panel")


@pytest.fixture(scope="module")
def data(dashboard_store) -> DashboardData:
    return DashboardData(dashboard_store)


# -- tokens and search ----------------------------------------------------------------------------
def test_token_kinds_of_wordpiece_tokens(data):
    tokens = data.tokens
    kinds = pd.Series(np.asarray(data.kinds), index=tokens.index)
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


def test_search_modes_match_pandas(data):
    tokens = data.tokens
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
        search_tokens(data.tokens, data.vocabulary, "x", "fuzzy")
    assert len(data.search("no-such-token-anywhere", "exact").ids) == 0


# -- one head's points ------------------------------------------------------------------------------
def test_head_points_cover_every_query_and_key(data, dashboard_store):
    points = data.head_points(1, 0, "umap", 2)
    frame = points.frame
    n = dashboard_store.n_tokens
    assert len(frame) == 2 * n and (frame["kind"] == "q").sum() == n
    for kind in ("q", "k"):
        rows = points.rows[kind]
        assert (rows >= 0).all()
        assert np.array_equal(frame["id"].to_numpy()[rows], np.arange(n))
        assert (frame["kind"].to_numpy()[rows] == kind).all()
    q = dashboard_store.queries(1, 0).astype(np.float32)
    assert np.allclose(frame["norm"].to_numpy()[points.rows["q"]], np.linalg.norm(q, axis=1), rtol=1e-5)
    assert frame["context"].iat[int(points.rows["q"][1])].count("[") >= 1


def test_every_shaded_pixel_knows_a_point_inside_it(data):
    points = data.head_points(1, 0, "umap", 2)
    frame = points.frame
    x_range = single.padded_range(frame["x"].to_numpy())
    y_range = single.padded_range(frame["y"].to_numpy())
    for colouring in single.COLOURINGS.values():
        image, rows = single.shade_points(frame, colouring, x_range, y_range, 120, 100)
        assert rows.shape == (100, 120) and image.shape == (100, 120)
        assert (rows >= 0).sum() > 50
    ys, xs = np.nonzero(rows >= 0)
    width, height = (x_range[1] - x_range[0]) / 120, (y_range[1] - y_range[0]) / 100
    picked = frame.iloc[rows[ys, xs]]
    assert np.all(np.abs(picked["x"].to_numpy() - (x_range[0] + (xs + 0.5) * width)) <= width / 2 + 1e-6)
    assert np.all(np.abs(picked["y"].to_numpy() - (y_range[0] + (ys + 0.5) * height)) <= height / 2 + 1e-6)


def test_raster_hover_carries_token_and_context(data):
    points = data.head_points(1, 0, "umap", 2)
    frame = points.frame
    element = single.raster_element(
        points,
        frame,
        single.COLOURINGS["query / key"],
        single.padded_range(frame["x"].to_numpy()),
        single.padded_range(frame["y"].to_numpy()),
        80,
        60,
    )
    dataset = element.data
    some = int(np.flatnonzero(dataset["__index__"].to_numpy().ravel() >= 0)[0])
    row = int(dataset["__index__"].to_numpy().ravel()[some])
    assert dataset["token"].to_numpy().ravel()[some] == frame["token"].iat[row]
    assert dataset["context"].to_numpy().ravel()[some] == frame["context"].iat[row]


def test_nearest_point_respects_shown_kinds(data):
    points = data.head_points(1, 0, "umap", 2)
    frame = points.frame
    key = int(points.rows["k"][5])
    x, y = frame["x"].iat[key], frame["y"].iat[key]
    assert single.nearest_point(points, ("q", "k"), x, y) == key
    query = single.nearest_point(points, ("q",), x, y)
    assert frame["kind"].iat[query] == "q"


def test_sample_3d_is_bounded_and_stable(data):
    points = data.head_points(1, 0, "pca", 2)
    assert len(single.sample_3d(points, ("q", "k"), limit=100)) == 100
    assert single.sample_3d(points, ("q",), limit=50).index.equals(single.sample_3d(points, ("q",), limit=50).index)


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
    special = dashboard_store.tokens["is_special"].to_numpy()[dashboard_store.doc_rows(0)]
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


def test_thumbnails_are_cached_and_remade_when_the_projection_changes(dashboard_store):
    path = thumbnail_path(dashboard_store, "pca", 2, 0, 0)
    first = thumbnail(dashboard_store, 0, 0, "pca", 2)
    assert path.read_bytes() == first
    image = np.asarray(Image.open(io.BytesIO(first)).convert("RGB")).reshape(-1, 3).astype(int)
    blue = (image[:, 2] > image[:, 0] + 40).sum()
    orange = (image[:, 0] > image[:, 2] + 40).sum()
    assert blue > 20 and orange > 20
    path.write_bytes(b"stale")
    os.utime(path, ns=(1, 1))
    assert thumbnail(dashboard_store, 0, 0, "pca", 2) == first


def test_matrix_of_every_head_greys_unprojected_ones(data, dashboard_store):
    projected = set(data.projections()["umap-2d"])
    element, grid = matrix.matrix_element(dashboard_store, data.heads, projected, "umap", 2)
    assert len(grid) == 72
    rgb = element.get(0).data if hasattr(element, "get") else None
    assert rgb is not None
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
