"""`qkscale serve` in a real browser: Debian chromium driven by Playwright.

The test serves a small MiniLM store (every head projected), checks that the matrix view paints one
thumbnail per head, opens a head, clicks a point, checks that the token's sentence and attention
appear, runs a search, and saves a screenshot. Only the app is served: store files are not.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qkscale.dashboard import browser

pytest.importorskip("playwright.sync_api")

TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(
    not Path(browser.CHROMIUM).exists(), reason=f"{browser.CHROMIUM} is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(dashboard_store, tmp_path_factory):
    """`qkscale serve` on a free port; the log must hold no traceback when it stops."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with browser.served(dashboard_store.path, log) as (url, _):
        yield url
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture
def page(tmp_path):
    with browser.chromium(tmp_path / "chromium-profile") as context:  # a fresh --user-data-dir
        yield context.new_page()


def test_nothing_but_the_app_is_served(server, dashboard_store):
    for path in ("manifest.json", "static/../manifest.json", "etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "shards/"):
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(server + path, timeout=10)
        answer.value.close()
        assert answer.value.code in (403, 404), path


def test_matrix_head_point_and_search_in_a_real_browser(server, page, dashboard_store, tmp_path):
    store = dashboard_store
    page.goto(server)
    page.wait_for_selector(".qk-matrix canvas", timeout=TIMEOUT_MS)
    page.get_by_text("72 heads").wait_for(timeout=TIMEOUT_MS)

    # Every head gets a tile with its own thumbnail (PCA: all 72 heads are projected).
    page.locator(".qk-matrix-controls select").first.select_option("pca")
    page.get_by_text("72 with a pca-2d projection").wait_for(timeout=TIMEOUT_MS)
    time.sleep(1.5)
    canvas = page.locator(".qk-matrix canvas").first
    pixels = browser.pixels(canvas)
    rows, columns = browser.tile_cells(pixels)
    assert (len(rows), len(columns)) == (store.n_layers, store.n_heads)
    assert browser.painted_tiles(pixels) == store.n_layers * store.n_heads

    # A click on the tile of layer 2, head 3 opens that head.
    box = canvas.bounding_box()
    scale = box["width"] / pixels.shape[1]
    (top, bottom), (left, right) = rows[2], columns[3]
    page.mouse.click(box["x"] + (left + right) / 2 * scale, box["y"] + (top + bottom) / 2 * scale)
    embedding = page.locator(".qk-embedding canvas").first
    embedding.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("L2H3 · pca 2D").wait_for(timeout=TIMEOUT_MS)
    time.sleep(1.5)

    # A click on a drawn point shows its token in its sentence and the sentence's attention.
    pixels = browser.pixels(embedding)
    ys, xs = np.nonzero((pixels < 200).any(axis=2))
    middle = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    box = embedding.bounding_box()
    scale = box["width"] / pixels.shape[1]
    page.mouse.click(box["x"] + xs[middle] * scale, box["y"] + ys[middle] * scale)
    title = page.locator(".qk-token-title")
    title.wait_for(timeout=TIMEOUT_MS)
    assert "L2H3" in title.inner_text()
    context = page.locator(".qk-sentence").first.inner_text()
    words = [t for t in store.tokens["token"].unique() if len(t) > 3 and t in context]
    assert words, context
    page.locator(".qk-attention canvas").first.wait_for(timeout=TIMEOUT_MS)

    # Search: every match counted, as the store counts them.
    expected = int((store.tokens["token"] == "the").sum())
    search = page.get_by_placeholder("e.g. the")
    search.click()
    search.type("the")
    search.press("Enter")
    page.get_by_text(f"{expected:,} tokens match 'the' (exact)").wait_for(timeout=TIMEOUT_MS)

    # A regex that does not compile is a message, and the session lives on.
    page.get_by_text("regex", exact=True).click()
    # The mode's own search ("the" as a regex) lands first, so the server's reply cannot race the typing.
    page.get_by_text("match 'the' (regex)").wait_for(timeout=TIMEOUT_MS)
    search.fill("((")
    search.press("Enter")
    page.get_by_text("does not compile").wait_for(timeout=TIMEOUT_MS)
    search.fill("^##")
    search.press("Enter")
    expected = int(store.tokens["token"].str.startswith("##").sum())
    page.get_by_text(f"{expected:,} tokens match '^##' (regex)").wait_for(timeout=TIMEOUT_MS)

    time.sleep(1.5)
    shot = Path(os.environ.get("QKSCALE_SCREENSHOT_DIR", tmp_path)) / "dashboard-single-head.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as picture:
        assert picture.size[0] >= 1500
