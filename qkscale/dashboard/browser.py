"""Drive a served dashboard in headless Debian chromium (Playwright): used by the tests and benchmarks."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(
    store: str | Path, log: Path, *options: str, timeout: float = 180, wrapper: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`qkscale serve STORE` on a free port, as a user starts it; yields its URL and process, then stops it.

    ``wrapper``: a command that runs the server (e.g. in a private mount namespace).
    """
    port = free_port()
    command = [*wrapper, sys.executable, "-m", "qkscale.cli", "serve", str(store), "--port", str(port), *options]
    url = f"http://127.0.0.1:{port}/"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"qkscale serve exited with {process.returncode}: {log.read_text()}")
            try:  # the port opens once the store is loaded; connecting opens no session
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"qkscale serve did not answer within {timeout:.0f} s") from None
                time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def chromium(profile: Path, width: int = 1500, height: int = 1100):
    """A persistent chromium context with a fresh profile folder (``--user-data-dir``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=os.environ.get("QKSCALE_CHROMIUM", CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": width, "height": height},
        )
        try:
            yield context
        finally:
            context.close()


def pixels(locator) -> np.ndarray:
    """A screenshot of one element as an ``[H, W, 3]`` int array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


def _runs(mask: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_length]


def tile_cells(image: np.ndarray, min_pixels: int = 30) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Pixel rows and columns of the grey tiles of a matrix-view screenshot (white gaps between them)."""
    tiles = (image < 250).any(axis=2)
    return _runs(tiles.mean(axis=1) > 0.5, min_pixels), _runs(tiles.mean(axis=0) > 0.3, min_pixels)


def painted_tiles(image: np.ndarray) -> int:
    """How many tiles show queries (blue) and keys (orange)."""
    rows, columns = tile_cells(image)
    count = 0
    for top, bottom in rows:
        for left, right in columns:
            cell = image[top:bottom, left:right]
            red, blue = cell[..., 0], cell[..., 2]
            count += bool((blue > red + 60).sum() > 5 and (red > blue + 60).sum() > 5)
    return count
