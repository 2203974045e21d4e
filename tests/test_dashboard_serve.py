"""`qkscale serve` as a user starts it: every interface, a login, a read-only store (real servers in subprocesses)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from qkscale.dashboard import browser
from qkscale.dashboard.server import machine_names, websocket_origins

TIMEOUT_MS = 90_000
WARNING = "qkscale: warning: --address 0.0.0.0: the dashboard is reachable from other machines; use --basic-auth"


def _get(url: str, host: str | None = None, opener=None) -> tuple[int, str, str]:
    """Status, final URL and body of a GET (``host``: the Host header a browser would send)."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=60) as answer:
            return answer.status, answer.url, answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, url, error.read().decode(errors="replace")


def _is_app(body: str) -> bool:
    """Whether ``body`` is the dashboard's page (Bokeh's document), not a login page."""
    return "<title>qkscale</title>" in body and "Bokeh" in body and 'name="password"' not in body


def _websocket_opens(url: str, origin: str) -> bool:
    """Whether the app's websocket opens for a page loaded from ``origin`` (as a browser there sends it)."""
    import asyncio

    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    status, _, body = _get(url)
    assert status == 200 and _is_app(body)
    token = re.search(r'"token":\s*"([^"]+)"', body)[1]

    async def connect() -> bool:
        socket_url = url.replace("http://", "ws://") + "ws"
        request = HTTPRequest(socket_url, headers={"Origin": origin}, request_timeout=60)
        try:
            connection = await websocket_connect(request, subprotocols=["bokeh", token])
        except HTTPClientError as error:
            assert error.code == 403, error
            return False
        connection.close()
        while await asyncio.wait_for(connection.read_message(), 60) is not None:  # until the server closes it too
            pass
        return True

    return asyncio.run(connect())


def test_every_interface_warns_and_admits_this_machines_names(dashboard_store, tmp_path):
    log = tmp_path / "serve.log"
    with browser.served(dashboard_store.path, log, "--address", "0.0.0.0") as (url, _):
        port = urllib.parse.urlsplit(url).port
        for name in machine_names():
            assert _websocket_opens(url, f"http://{name}:{port}"), name
        assert not _websocket_opens(url, f"http://elsewhere.example:{port}")  # Bokeh refuses other origins
    lines = log.read_text().splitlines()
    assert lines.count(WARNING) == 1, lines
    assert "Traceback" not in log.read_text()


def test_origins_are_the_bound_address_or_the_machines_names():
    assert websocket_origins("127.0.0.1", 5006) == ["127.0.0.1:5006", "localhost:5006"]
    every = websocket_origins("0.0.0.0", 5006)
    assert {"127.0.0.1:5006", "localhost:5006"} <= set(every) and all(o.endswith(":5006") for o in every)
    assert websocket_origins("0.0.0.0", 5006, ["proxy.example:443"]) == ["proxy.example:443"]


def _login(url: str, user: str, password: str) -> tuple[str, str]:
    """POST the login form as Panel's basic-auth page sends it; the final URL and body (cookies kept)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    with opener.open(urllib.request.Request(url + "login", data=form), timeout=60) as answer:
        answer.read()
    _, final, body = _get(url, opener=opener)
    return final, body


@pytest.mark.parametrize("users", [None, {"ann": "s3cret pass"}], ids=["password", "users-file"])
def test_basic_auth_asks_for_a_login_first(dashboard_store, tmp_path, users):
    secret = "s3cret pass"
    if users is not None:
        (tmp_path / "users.json").write_text(json.dumps(users))
    option = secret if users is None else str(tmp_path / "users.json")
    log = tmp_path / "serve.log"
    with browser.served(dashboard_store.path, log, "--basic-auth", option, "--cookie-secret", "x" * 32) as (url, _):
        status, final, body = _get(url)
        assert status == 200 and urllib.parse.urlsplit(final).path == "/login", final
        assert 'name="password"' in body and not _is_app(body)
        final, body = _login(url, "ann", "wrong")
        assert not _is_app(body)
        final, body = _login(url, "ann", secret)
        assert urllib.parse.urlsplit(final).path == "/" and _is_app(body), final
    assert "Traceback" not in log.read_text()
    assert "warning" not in log.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--basic-auth", "missing.json"], "--basic-auth missing.json:"),
        (["--basic-auth", "BAD"], "is not JSON"),
        (["--threads", "0"], "--threads 0 must be at least 1"),
    ],
)
def test_bad_serve_options_are_one_line_errors(run_cli, dashboard_store, tmp_path, monkeypatch, args, message):
    if args[1] == "BAD":
        (tmp_path / "bad.json").write_text("{not json")
        args = ["--basic-auth", str(tmp_path / "bad.json")]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("serve", dashboard_store.path, *args)
    assert code == 2 and err.startswith("qkscale: error: ") and message in err and err.count("\n") == 1, err


# -- a read-only store ----------------------------------------------------------------------------
def _read_only(store: Path) -> list[str]:
    """A command prefix under which ``store`` is truly read-only, or skip when none exists here.

    Not root: the files' modes suffice. Root ignores modes, so the server runs in a private mount
    namespace where the store is a read-only bind mount (writes fail with EROFS even for root).
    """
    for folder in [store, *store.rglob("*")]:
        folder.chmod(folder.stat().st_mode & ~0o222)
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root without unshare(1): no way to make the store read-only for the server")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && ! touch "$0/probe" 2>/dev/null && shift'
    wrapper = [unshare, "--mount", "sh", "-c", f'{script} && exec "$@"', str(store), "run"]
    probe = subprocess.run([*wrapper, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.strip() or probe.returncode}")
    return wrapper


def test_a_read_only_store_serves_its_matrix_and_a_head(dashboard_store, tmp_path):
    pytest.importorskip("playwright.sync_api")
    if not Path(browser.CHROMIUM).exists():
        pytest.skip(f"{browser.CHROMIUM} is not installed")
    store = tmp_path / "store"
    shutil.copytree(dashboard_store.path, store)
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    wrapper = _read_only(store)
    log = tmp_path / "serve.log"
    try:
        with browser.served(store, log, wrapper=wrapper) as (url, _), browser.chromium(tmp_path / "profile") as context:
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector(".qk-matrix canvas", timeout=TIMEOUT_MS)
            page.get_by_text("72 heads").wait_for(timeout=TIMEOUT_MS)
            page.goto(f"{url}?tab=1&layer=2&head=3&method=pca&dims=2")
            page.locator(".qk-embedding canvas").first.wait_for(timeout=TIMEOUT_MS)
            page.get_by_text("L2H3 · pca 2D").wait_for(timeout=TIMEOUT_MS)
    finally:
        for folder in [store, *store.rglob("*")]:
            folder.chmod(folder.stat().st_mode | 0o200)  # let pytest remove the copy
    assert "Traceback" not in log.read_text(), log.read_text()
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before  # nothing written
