"""Matrix-view thumbnails: each head's joint embedding datashaded once, cached as PNG in the store.

Queries and keys get two colours (AttentionViz's convention); the image is rendered from every
point (no sampling) and kept under ``STORE/dashboard/thumbnails/{method}-{dims}d/``, next to the
projection it was made from, and remade only when that projection is newer.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from qkscale.store import Store
from qkscale.store.files import temp_sibling
from qkscale.store.projections import projection_key, projection_path

THUMBNAIL_PIXELS = 112  # about the size a tile is drawn at (12 heads across)
QUERY_COLOR = "#1f77b4"  # blue
KEY_COLOR = "#ff7f0e"  # orange
COLOR_KEY = {"q": QUERY_COLOR, "k": KEY_COLOR}
CACHE = Path("dashboard") / "thumbnails"


def render(points: pd.DataFrame, pixels: int = THUMBNAIL_PIXELS) -> bytes:
    """PNG bytes of one head's points (columns x, y, kind), queries and keys in two colours."""
    import datashader as ds
    import datashader.transfer_functions as tf

    frame = pd.DataFrame(
        {"x": points["x"].to_numpy(), "y": points["y"].to_numpy(), "kind": points["kind"].astype("category")}
    )
    x_range = _padded(frame["x"].to_numpy())
    y_range = _padded(frame["y"].to_numpy())
    canvas = ds.Canvas(plot_width=pixels, plot_height=pixels, x_range=x_range, y_range=y_range)
    counts = canvas.points(frame, "x", "y", agg=ds.count_cat("kind"))
    image = tf.spread(tf.shade(counts, color_key=COLOR_KEY, how="eq_hist", min_alpha=60), px=1)
    buffer = io.BytesIO()
    image.to_pil().save(buffer, format="PNG")
    return buffer.getvalue()


def _padded(values: np.ndarray, margin: float = 0.02) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * margin or 1.0
    return low - pad, high + pad


def thumbnail_path(store: Store, method: str, dims: int, layer: int, head: int) -> Path:
    return store.path / CACHE / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}.png"


def thumbnail(store: Store, layer: int, head: int, method: str = "umap", dims: int = 2) -> bytes:
    """The cached thumbnail of one head, rendered (and written atomically) when missing or stale."""
    path = thumbnail_path(store, method, dims, layer, head)
    source = projection_path(store.path, method, dims, layer, head)
    if path.is_file() and path.stat().st_mtime_ns >= source.stat().st_mtime_ns:
        return path.read_bytes()
    png = render(store.projection(layer, head, method, dims))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    temp.write_bytes(png)
    temp.replace(path)
    return png
