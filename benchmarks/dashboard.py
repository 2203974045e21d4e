"""Benchmark the served dashboard in a real browser: matrix first paint, zoom re-aggregation, memory.

Starts ``qkscale serve STORE --verbose`` as a user would, drives Debian chromium with Playwright:

- matrix first paint: from navigation until every head's tile shows its queries and keys, in the
  server's first session (cold: the thumbnails written by `project` read for the first time) and
  again in later sessions (warm);
- zoom: wheel zooms over the single-head view; the server logs the time of each redraw
  (pyramid window or datashader over the points in view, shading, hover rows), which is the
  figure reported (min/median/max);
- memory: the server's resident set after start, with 1 session and with 5 open sessions.

Run::

    python -m benchmarks.dashboard --store STORE --layer 3 --head 0 --out dashboard.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qkscale import open_store
from qkscale.dashboard import browser

TIMEOUT_MS = 300_000
_DRAWN = re.compile(r"L(\d+)H(\d+): drew (\d+)x(\d+) px in (\d+) ms")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--method", default="pca", help="projection shown in the matrix view")
    parser.add_argument("--layer", type=int, required=True, help="head opened in the single view")
    parser.add_argument("--head", type=int, required=True)
    parser.add_argument("--single-method", default="umap", help="projection of the single view")
    parser.add_argument("--zooms", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="warm matrix paints")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/dashboard.json"))
    return parser.parse_args(argv)


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The resident set of process ``pid`` now (``VmHWM``: its peak so far), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def _matrix_paint(context, url: str, expected: int, method: str) -> dict[str, float]:
    """Seconds from navigation until the matrix canvas is on the page, and until a screenshot shows
    all ``expected`` tiles painted (an upper bound: taking the screenshot itself takes ~0.4 s here)."""
    page = context.new_page()
    started = time.perf_counter()
    page.goto(f"{url}?method={method}", wait_until="commit")
    page.get_by_text(f"with a {method}-2d projection").wait_for(timeout=TIMEOUT_MS)
    canvas = page.locator(".qk-matrix canvas").first
    canvas.wait_for(timeout=TIMEOUT_MS)
    on_page = time.perf_counter() - started
    while browser.painted_tiles(browser.pixels(canvas)) < expected:
        if time.perf_counter() - started > TIMEOUT_MS / 1000:
            raise TimeoutError("the matrix view did not paint every tile")
    painted = time.perf_counter() - started
    page.close()
    return {"canvas_on_page": on_page, "all_tiles_painted": painted}


def _open_single(context, url: str, args: argparse.Namespace):
    """A new session showing the single-head view of the benchmarked head (the view is in the URL)."""
    page = context.new_page()
    page.goto(f"{url}?tab=1&layer={args.layer}&head={args.head}&method={args.single_method}")
    page.get_by_text(f"L{args.layer}H{args.head} · {args.single_method} 2D").wait_for(timeout=TIMEOUT_MS)
    page.locator(".qk-embedding canvas").first.wait_for(timeout=TIMEOUT_MS)
    return page


def _aggregations(log: Path, layer: int, head: int) -> list[dict[str, int]]:
    found = []
    for match in _DRAWN.finditer(log.read_text()):
        lay, hd, width, height, ms = map(int, match.groups())
        if (lay, hd) == (layer, head):
            found.append({"width": width, "height": height, "ms": ms})
    return found


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = open_store(args.store)
    heads = len(store.layers) * store.n_heads
    report: dict[str, Any] = {
        "benchmark": "dashboard",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "store": {"path": str(store.path), "tokens": store.n_tokens, "heads": heads},
        "machine": {"cpu_count": os.cpu_count(), "browser": browser.CHROMIUM},
    }
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        log = scratch / "serve.log"
        started = time.perf_counter()
        with browser.served(store.path, log, "--verbose", timeout=600) as (url, process):
            report["server_ready_s"] = time.perf_counter() - started
            report["rss_mib"] = {"started": _rss_mib(process.pid)}
            with browser.chromium(scratch / "profile") as context:
                projected = len(store.projections().get(f"{args.method}-2d", []))
                cold = _matrix_paint(context, url, projected, args.method)
                warm = [_matrix_paint(context, url, projected, args.method) for _ in range(args.repeats)]
                report["matrix_first_paint_s"] = {
                    "first_session": cold,
                    "later_sessions": {key: _summary([w[key] for w in warm]) for key in cold},
                }

                opened = time.perf_counter()
                page = _open_single(context, url, args)
                report["open_head_s"] = time.perf_counter() - opened
                report["rss_mib"]["1_session"] = _rss_mib(process.pid)
                canvas = page.locator(".qk-embedding canvas").first
                box = canvas.bounding_box()
                before = len(_aggregations(log, args.layer, args.head))
                page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
                for _ in range(args.zooms):
                    page.mouse.wheel(0, -240)
                    time.sleep(2.0)
                zooms = _aggregations(log, args.layer, args.head)[before:]
                report["zoom"] = {
                    "points": store.n_tokens * 2,
                    "pixels": f"{zooms[0]['width']}x{zooms[0]['height']}" if zooms else None,
                    "server_ms": _summary([z["ms"] for z in zooms]) if zooms else None,
                }
                pages = [page] + [_open_single(context, url, args) for _ in range(args.sessions - 1)]
                time.sleep(2)
                report["rss_mib"][f"{args.sessions}_sessions"] = _rss_mib(process.pid)
                for other in pages:
                    other.close()
            report["rss_mib"]["peak"] = _rss_mib(process.pid, "VmHWM")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
