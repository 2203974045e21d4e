"""Load test of the served dashboard: many concurrent sessions on loopback, each doing what a user does.

Starts ``qkscale serve STORE`` as a user would, then opens ``--sessions`` Bokeh client sessions
(``bokeh.client.pull_session``, each in its own thread with its own IO loop: a browser without the
drawing), all at once or one every ``--arrival`` seconds, pausing ``--think`` seconds between
actions; all stay connected until the last is done. Each session

- opens the matrix (the session's document, built by the server, arrives),
- opens a head (the single-head tab, then its own layer and head: sessions spread over the heads),
- zooms three times (halves the single-head plot's x and y ranges; the server re-aggregates and
  sends the new image: the time until an image of the new extent arrives),
- clicks a point (a Tap event at the view's centre; the time until the token's details arrive).

Reports p50/p95/max seconds per action over all sessions, the number of errors (an action that
failed or did not answer within ``--timeout``) and the server's peak resident set (VmHWM).

Run::

    python -m benchmarks.load --store STORE --sessions 50 --out benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import new_report, write_json
from qkscale import open_store
from qkscale.dashboard import browser

ACTIONS = ("matrix", "open_head", "zoom", "click")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a store with a 2D projection of every head")
    parser.add_argument("--method", default="pca")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--zooms", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="qkscale serve --threads")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds an action may take before it is an error")
    parser.add_argument(
        "--think", type=float, default=0.0, help="seconds a user pauses before each action after the first"
    )
    parser.add_argument(
        "--arrival", type=float, default=0.0, help="seconds between two sessions' starts (0: all start at once)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/load.json"))
    return parser.parse_args(argv)


class ActionTimeout(RuntimeError):
    """The server did not answer an action in time."""


class Session:
    """One Bokeh client session of the dashboard, driven from its own thread."""

    def __init__(self, url: str, timeout: float):
        from bokeh.client import pull_session
        from tornado.ioloop import IOLoop

        self.timeout = timeout
        self.loop = IOLoop()  # this thread's own loop: sessions do not wait on each other here
        self.client = pull_session(url=url, io_loop=self.loop)
        self.doc = self.client.document

    def wait(self, done: Callable[[], bool], what: str, shown: Callable[[], str] = lambda: "") -> None:
        """Run this session's IO loop (the server's patches arrive) until ``done()``; ``shown()`` says what is there."""
        handle = self.loop.call_later(self.timeout, self.loop.stop)  # waiting for a message: stop the loop itself
        self.client._connection._loop_until(done)  # checked after every message from the server
        self.loop.remove_timeout(handle)
        if not done():
            raise ActionTimeout(f"{what}: no answer within {self.timeout:.0f} s{shown()}")

    def single_head_state(self) -> str:
        """What the single-head view shows (for an error): its selectors' values and the figures' tags."""
        values = {title: [w.value for w in self.selector(title)] for title in ("projection", "layer", "head")}
        tags = [figure.tags for figure in self.find("figure")]
        return f" (selectors {values}, figures tagged {tags})"

    def pause(self, seconds: float) -> None:
        """Let ``seconds`` pass as a user does between actions (what the server sends meanwhile waits in the socket)."""
        time.sleep(seconds)

    def find(self, kind: str | tuple[str, ...], test: Callable[[Any], bool] = lambda model: True) -> list:
        """The document's models of class ``kind`` (or of one of ``kind``) that pass ``test``."""
        kinds = (kind,) if isinstance(kind, str) else kind
        return [m for m in self.doc.models if type(m).__name__ in kinds and test(m)]

    def selector(self, title: str) -> list:
        return self.find(("Select", "CustomSelect"), lambda m: m.title == title)

    def embedding(self, layer: int, head: int):
        """The single-head plot of ``layer``/``head`` once it is in the document, else None."""
        for figure in self.find("figure"):
            if f"L{layer}H{head}" in (figure.tags or []) and self._image(figure) is not None:
                return figure
        return None

    @staticmethod
    def _image(figure):
        for renderer in figure.renderers:
            if type(renderer.glyph).__name__ == "ImageRGBA":
                return renderer.data_source
        return None

    def close(self) -> None:
        self.client.close()
        self.loop.close(all_fds=True)


def ui_event(kind, model, **values):
    """A Bokeh UI event as a browser sends it (Bokeh's Python events serialize their model only)."""
    event = kind(model, **values)
    event.event_values = lambda: {"model": model, **values}
    return event


def select(session: Session, title: str, value: str) -> None:
    """Choose the option shown as ``value`` in the selector ``title`` (Panel sends option values, not labels)."""
    widgets = session.selector(title)
    if not widgets:
        raise RuntimeError(f"no {title!r} selector in the single-head view")
    options = [option if isinstance(option, tuple | list) else (option, option) for option in widgets[0].options]
    chosen = [code for code, label in options if label == value]
    if not chosen:
        raise RuntimeError(f"the {title!r} selector has no option {value!r}")
    widgets[0].value = chosen[0]


def run_session(
    url: str, method: str, layer: int, head: int, settings: dict, times: dict[str, list], done: Callable[[], None]
) -> None:
    """One user's actions, each timed into ``times``; raises on the first that fails.

    ``settings``: ``zooms``, ``timeout`` (of an action) and ``think`` (seconds the user pauses
    before each action after the first).

    The session stays connected until ``done`` (a barrier of all sessions) lets it go, so that every
    session is open at once.
    """
    from bokeh.events import DocumentReady, RangesUpdate, Tap

    zooms, timeout, think = settings["zooms"], settings["timeout"], settings["think"]
    started, session = time.perf_counter(), None
    try:
        session = Session(url, timeout)
        session.wait(lambda: bool(session.find("Tabs")), "matrix")
        session.doc.callbacks.send_event(DocumentReady())  # as a browser does once it drew the page
        times["matrix"].append(time.perf_counter() - started)

        session.pause(think)
        started = time.perf_counter()
        session.find("Tabs")[0].active = 1
        session.wait(lambda: bool(session.selector("layer")), "single-head tab")
        select(session, "projection", method)
        select(session, "layer", f"L{layer}")
        select(session, "head", str(head))
        session.wait(lambda: session.embedding(layer, head) is not None, "open head", session.single_head_state)
        times["open_head"].append(time.perf_counter() - started)

        figure = session.embedding(layer, head)
        source = session._image(figure)
        for _ in range(zooms):
            session.pause(think)
            (x0, x1), (y0, y1) = (figure.x_range.start, figure.x_range.end), (figure.y_range.start, figure.y_range.end)
            width, cx, cy = (x1 - x0) / 2, (x0 + x1) / 2, (y0 + y1) / 2
            started = time.perf_counter()
            x_range, y_range = (cx - width / 2, cx + width / 2), (cy - (y1 - y0) / 4, cy + (y1 - y0) / 4)
            figure.x_range.update(start=x_range[0], end=x_range[1])
            figure.y_range.update(start=y_range[0], end=y_range[1])
            event = ui_event(RangesUpdate, figure, x0=x_range[0], x1=x_range[1], y0=y_range[0], y1=y_range[1])
            session.doc.callbacks.send_event(event)  # what a browser sends after a wheel zoom

            def zoomed(width=width) -> bool:  # an image of about the new extent (snapped to the map's cells)
                shown = source.data.get("dw")
                return shown is not None and len(shown) > 0 and float(shown[0]) < 0.75 * 2 * width

            session.wait(zoomed, "zoom")
            times["zoom"].append(time.perf_counter() - started)

        session.pause(think)
        started = time.perf_counter()
        x, y = (figure.x_range.start + figure.x_range.end) / 2, (figure.y_range.start + figure.y_range.end) / 2
        session.doc.callbacks.send_event(ui_event(Tap, figure, x=x, y=y))
        session.wait(lambda: bool(session.find("HTML", lambda m: "qk-token-title" in (m.text or ""))), "click")
        times["click"].append(time.perf_counter() - started)
    finally:
        done()
        if session is not None:
            session.close()


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "max": float(array.max()),
    }


def load(
    store: Path,
    method: str,
    sessions: int,
    zooms: int,
    threads: int,
    timeout: float,
    arrival: float,
    think: float,
    log: Path,
) -> dict[str, Any]:
    """Serve ``store`` and run ``sessions`` concurrent sessions; their figures, errors and the server's memory.

    Session ``i`` starts ``i * arrival`` seconds after the first (all at once for 0); each stays
    connected until every session is done.
    """
    from qkscale.dashboard.app import load_extensions

    load_extensions()  # the client resolves Panel's and HoloViews' model types by importing them
    opened = open_store(store)
    heads = opened.projections().get(f"{method}-2d")
    if not heads:
        raise SystemExit(f"benchmarks.load: error: {store} has no {method} 2D projection")
    times: dict[str, list[float]] = {action: [] for action in ACTIONS}
    errors: list[str] = []
    settings = {"zooms": zooms, "timeout": timeout, "think": think}
    gate, finished = threading.Barrier(sessions), threading.Barrier(sessions)
    hold = (timeout + think) * (zooms + 3) + arrival * sessions
    counting, open_now, peak_open = threading.Lock(), [0], [0]

    def opened_one(change: int) -> None:
        with counting:
            open_now[0] += change
            peak_open[0] = max(peak_open[0], open_now[0])

    def all_done() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            finished.wait(timeout=hold)
        opened_one(-1)

    def user(i: int) -> None:
        try:
            gate.wait()
            time.sleep(i * arrival)
            opened_one(+1)
            run_session(url, method, *heads[i % len(heads)], settings, times, all_done)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, the others go on
            errors.append(f"session {i}: {type(exc).__name__}: {exc}")
            traceback.print_exc()

    with browser.served(store, log, "--threads", str(threads)) as (url, process):
        started, server_cpu_at_start = time.perf_counter(), _cpu_seconds(process.pid)
        client_cpu_at_start = time.process_time()
        workers = [threading.Thread(target=user, args=(i,), name=f"session-{i}") for i in range(sessions)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
        peak, server_cpu = _peak_rss_mib(process.pid), _cpu_seconds(process.pid) - server_cpu_at_start
        client_cpu = time.process_time() - client_cpu_at_start
    server_log = log.read_text()
    return {
        "sessions": sessions,
        "zooms_per_session": zooms,
        "method": method,
        "heads": len(heads),
        "server_threads": threads,
        "arrival_s": arrival,
        "think_s": think,
        "peak_open_sessions": peak_open[0],
        "seconds": seconds,
        "actions_s": {action: percentiles(values) for action, values in times.items()},
        "errors": len(errors),
        "error_messages": errors[:20],
        "server_tracebacks": server_tracebacks(server_log),
        "server_peak_rss_mib": peak,
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "tokens": opened.n_tokens,
    }


def server_tracebacks(log: str) -> int:
    """Tracebacks in the server's log, but for sockets a session closed while the server wrote to it."""
    closed = ("WebSocketClosedError", "StreamClosedError")
    return sum(not any(name in block for name in closed) for block in log.split("Traceback")[1:])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = new_report("load")
    log = args.out.with_suffix(".log")
    options = (args.zooms, args.threads, args.timeout, args.arrival, args.think)
    section = load(args.store, args.method, args.sessions, *options, log)
    report["sections"]["load"] = section
    write_json(report, args.out)
    for action, figure in section["actions_s"].items():
        if figure["n"]:
            print(f"{action:10s} n={figure['n']:3d}  p50 {figure['p50']:.2f} s  p95 {figure['p95']:.2f} s")
    print(f"sessions open at once: {section['peak_open_sessions']} of {section['sessions']}")
    per_session = {k: section[f"{k}_cpu_s"] / section["sessions"] for k in ("server", "client")}
    print(f"CPU per session: server {per_session['server']:.2f} s, load-test clients {per_session['client']:.2f} s")
    print(f"errors {section['errors']}; server peak RSS {section['server_peak_rss_mib']:.0f} MiB; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
