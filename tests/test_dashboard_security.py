"""The dashboard against hostile input: store strings that are HTML payloads, and regexes built to backtrack.

The store of :mod:`hostile` holds ``<script>`` and ``<img onerror>`` payloads in its tokens, its
documents, its model source, a projection method (a folder name) and a metric name. Real chromium
opens every view of it; no payload may become an element or run, and each must show as text.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import quote

import hostile
import numpy as np
import pytest

from qkscale.dashboard import browser
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.tokens import SearchError, matching_entries

TIMEOUT_MS = 90_000
WATCHDOG_S = 120  # only keeps a hanging regex from hanging the suite: not a timing goal

# Every element a payload could have made, searched through Bokeh's shadow roots and the 3D iframe.
# (Plotly's own script inside the iframe holds the payloads as escaped JSON strings: not a payload's script.)
FIND_PAYLOADS = """() => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      const tag = el.tagName.toLowerCase();
      if (tag === 'img' && el.getAttribute('src') === 'x') found.push(el.outerHTML.slice(0, 120));
      const code = tag === 'script' && el.textContent.trim().startsWith('window.__pwned');
      if (code) found.push(el.outerHTML.slice(0, 120));
      for (const name of el.getAttributeNames())
        if (name.startsWith('on') && (el.getAttribute(name) || '').includes('__pwned')) found.push(`${tag} ${name}`);
      if (el.shadowRoot) walk(el.shadowRoot);
      if (tag === 'iframe' && el.contentDocument) walk(el.contentDocument);
    }
  };
  walk(document);
  return {found, pwned: window.__pwned === undefined ? null : window.__pwned, title: document.title};
}"""


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    return hostile.hostile_store(tmp_path_factory.mktemp("hostile"))


# -- regular expressions: RE2 -------------------------------------------------------------------
def _within_watchdog(work):
    """``work()``'s result, run in a thread the test stops waiting for after :data:`WATCHDOG_S`."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", work()), daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    assert not thread.is_alive(), f"the search did not finish within {WATCHDOG_S} s"
    return result["value"]


def test_catastrophic_regex_runs_in_linear_time():
    # Python's re takes exponential time on (a+)+$ over a run of a's that does not end the string.
    names = np.array(["a" * 100_000 + "b", "a" * 5_000, "b", "ca"], dtype=object)
    hits = _within_watchdog(lambda: matching_entries(names, "(a+)+$", "regex"))
    assert hits.tolist() == [False, True, False, True]


@pytest.mark.parametrize("pattern", [r"(a)\1", "(?=the)", "(?<!x)the", "(("])
def test_a_regex_re2_refuses_is_a_one_line_message(hostile_root, pattern):
    from qkscale.dashboard.state import SessionState
    from qkscale.dashboard.views.search import TokenSearch

    data = DashboardData(hostile_root)
    with pytest.raises(SearchError, match="does not compile") as refused:
        data.search(pattern, "regex")
    assert "\n" not in str(refused.value)
    state = SessionState.of(data)
    search = TokenSearch(data, state)
    state.param.update(search_mode="regex", search_text=pattern + hostile.SCRIPT)
    assert search.matches is None and "does not compile" in search.error and "\n" not in search.error
    shown = search._summary().object
    assert "<script>" not in shown and "&lt;script&gt;" in shown


def test_regex_search_over_a_store_matches_python_re(hostile_root):
    data = DashboardData(hostile_root)
    tokens = data.store.tokens["token"]
    found = data.search(r"^<img\b.*onerror", "regex")
    assert np.array_equal(found.ids, np.flatnonzero(tokens == hostile.IMG))
    assert len(found.ids) > 0


# -- every view in chromium ---------------------------------------------------------------------
pytestmark_browser = pytest.mark.skipif(
    not Path(browser.CHROMIUM).exists(), reason=f"{browser.CHROMIUM} is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(hostile_root, tmp_path_factory):
    pytest.importorskip("playwright.sync_api")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with browser.served(hostile_root, log) as (url, _):
        yield url
    text = log.read_text()
    assert "GET /x " not in text, text  # an <img src=x> existed, if only for a moment
    closed = ("WebSocketClosedError", "StreamClosedError")
    failures = [block for block in text.split("Traceback")[1:] if not any(name in block for name in closed)]
    assert not failures, text  # (a page left while the server writes to it closes its socket: not a failure)


def _assert_inert(page, where: str) -> None:
    state = page.evaluate(FIND_PAYLOADS)
    assert state == {"found": [], "pwned": None, "title": "qkscale"}, where


def _show(page, text: str) -> None:
    """Wait until ``text`` is on the page as text (Playwright's text search pierces shadow roots)."""
    page.get_by_text(text, exact=False).first.wait_for(timeout=TIMEOUT_MS)


def _hover_points(page, embedding) -> list[str]:
    """Hover the centre of drawn points until a tooltip shows its token (server-side hover); their texts."""
    from scipy import ndimage

    pixels = browser.pixels(embedding)
    box = embedding.bounding_box()
    scale = box["width"] / pixels.shape[1]
    labels, n = ndimage.label(np.abs(pixels[..., 0] - pixels[..., 2]) > 60)  # blue and orange points
    centres = [c for c in ndimage.center_of_mass(labels > 0, labels, range(1, n + 1)) if c[1] < 0.85 * pixels.shape[1]]
    seen = []
    tooltips = page.locator("[class*=Tooltip], [class*=tooltip]")
    for row, column in centres[:20]:  # the toolbar (right) is coloured too: left of it only
        for dx, dy in ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)):  # the point's own pixel is near the blob's centre
            x, y = box["x"] + (column + dx) * scale, box["y"] + (row + dy) * scale
            page.mouse.move(x, y)
            time.sleep(1.0)  # the server sends the hovered token's columns
            page.mouse.move(x + 0.2, y)  # the tooltip shows them on the next move
            time.sleep(0.3)
            texts = [t for t in tooltips.all_inner_texts() if "context" in t and "undefined" not in t]
            if texts:
                break
        seen += texts
        if any("onerror" in text for text in seen):
            break
    return seen


def _click_a_point(page, embedding) -> None:
    pixels = browser.pixels(embedding)
    ys, xs = np.nonzero(np.abs(pixels[..., 0] - pixels[..., 2]) > 60)
    keep = xs < 0.85 * pixels.shape[1]
    ys, xs = ys[keep], xs[keep]
    middle = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    box = embedding.bounding_box()
    scale = box["width"] / pixels.shape[1]
    page.mouse.click(box["x"] + xs[middle] * scale, box["y"] + ys[middle] * scale)


@pytestmark_browser
def test_no_store_string_becomes_an_element_or_runs(server, hostile_root, tmp_path):
    method = quote(hostile.METHOD)
    with browser.chromium(tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector(".qk-matrix canvas", timeout=TIMEOUT_MS)
        _show(page, "window.__pwned=2")  # the header: the model source, as text
        _assert_inert(page, "header and matrix")

        # The method selector and the matrix of the hostile method, labelled by the hostile metric.
        selects = page.locator(".qk-matrix-controls select")
        selects.first.select_option(hostile.METHOD)
        _show(page, f"with a {hostile.METHOD}-2d projection")
        selects.nth(3).select_option(hostile.METRIC)
        time.sleep(1.5)
        _assert_inert(page, "matrix of the hostile method")

        # The single-head view: title, hover tooltips (tokens and contexts), a clicked token.
        page.goto(f"{server}?tab=1&layer=0&head=0&method={method}&dims=2")
        embedding = page.locator(".qk-embedding canvas").first
        embedding.wait_for(timeout=TIMEOUT_MS)
        _show(page, f"L0H0 · {hostile.METHOD} 2D")
        time.sleep(1.5)
        tooltips = _hover_points(page, embedding)
        assert any(hostile.IMG in text for text in tooltips), tooltips
        _assert_inert(page, "hover tooltips")
        _click_a_point(page, embedding)
        page.locator(".qk-token-title").first.wait_for(timeout=TIMEOUT_MS)
        page.locator(".qk-attention canvas").first.wait_for(timeout=TIMEOUT_MS)
        _show(page, hostile.SCRIPT)  # the token's sentence
        _assert_inert(page, "clicked token")

        # Search: a hostile query and its count; a regex RE2 refuses, quoted in the message.
        expected = int((DashboardData(hostile_root).store.tokens["token"] == hostile.IMG).sum())
        search = page.get_by_placeholder("e.g. the")
        search.fill(hostile.IMG)
        search.press("Enter")
        _show(page, f"{expected:,} tokens match")
        page.get_by_text("regex", exact=True).click()
        # The mode's own search (the same text as a regex) lands first, so its reply cannot race the typing.
        page.locator(".qk-search-count", has_text="(regex)").first.wait_for(timeout=TIMEOUT_MS)
        search.fill(f"(?={hostile.SCRIPT})")
        search.press("Enter")
        _show(page, "does not compile")
        _assert_inert(page, "search")

        # 3D: Plotly's title and hover texts inside the view's iframe.
        page.goto(f"{server}?tab=1&layer=0&head=0&method={method}&dims=3")
        page.frame_locator(".qk-embedding-3d iframe").locator(".js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
        _show(page, f"{hostile.METHOD} 3D")
        _assert_inert(page, "3D view")

        # The sentence view (text, lines and heatmap), the aggregate and the metrics table.
        page.goto(f"{server}?tab=2&doc=0")
        page.locator(".qk-model-view canvas").first.wait_for(timeout=TIMEOUT_MS)
        _show(page, hostile.SCRIPT)
        page.get_by_text("heatmap", exact=True).first.click()
        page.locator(".qk-attention canvas").first.wait_for(timeout=TIMEOUT_MS)
        _assert_inert(page, "sentence view")
        page.goto(f"{server}?tab=3")
        page.wait_for_selector("canvas", timeout=TIMEOUT_MS)
        time.sleep(1.5)
        _assert_inert(page, "aggregate view")
        page.goto(f"{server}?tab=4")
        _show(page, hostile.METRIC)  # a column title of the metrics table
        _assert_inert(page, "metrics table")
