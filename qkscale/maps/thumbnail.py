"""A head's matrix-view thumbnail: every point of its projection datashaded once, written as PNG by `project`.

Queries and keys get two colours (AttentionViz's convention). The projection file is aggregated
one row group at a time (counts add up exactly), so memory is set by the row group.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from qkscale.maps.order import projection_extent
from qkscale.store.files import temp_sibling
from qkscale.store.projections import projection_key

THUMBNAILS = "thumbnails"
THUMBNAIL_PIXELS = 112  # about the size a tile is drawn at (12 heads across)
QUERY_COLOR = "#1f77b4"  # blue
KEY_COLOR = "#ff7f0e"  # orange
COLOR_KEY = {"q": QUERY_COLOR, "k": KEY_COLOR}


def thumbnail_path(root: Path, method: str, dims: int, layer: int, head: int) -> Path:
    return root / THUMBNAILS / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}.png"


def padded(low: float, high: float, margin: float = 0.02) -> tuple[float, float]:
    """``[low, high]`` widened by ``margin`` of its length on each side (never empty)."""
    pad = (high - low) * margin or 1.0
    return float(low) - pad, float(high) + pad


def render_projection(projection: Path, pixels: int = THUMBNAIL_PIXELS) -> bytes:
    """PNG bytes of the x-y plane of the projection file at ``projection``, every point counted."""
    import datashader as ds
    import datashader.transfer_functions as tf

    file = pq.ParquetFile(projection)
    low, high = projection_extent(file)
    x_range, y_range = padded(low[0], high[0]), padded(low[1], high[1])
    canvas = ds.Canvas(plot_width=pixels, plot_height=pixels, x_range=x_range, y_range=y_range)
    total = None
    for batch in file.iter_batches(columns=["x", "y", "kind"]):
        kind = batch.column("kind")
        codes = (np.asarray(kind.dictionary.to_pylist())[kind.indices.to_numpy()] == "k").astype(np.int8)
        frame = pd.DataFrame(
            {
                "x": batch.column("x").to_numpy(),
                "y": batch.column("y").to_numpy(),
                "kind": pd.Categorical.from_codes(codes, ["q", "k"]),
            }
        )
        counts = canvas.points(frame, "x", "y", agg=ds.count_cat("kind"))
        total = counts if total is None else total + counts
    image = tf.spread(tf.shade(total, color_key=COLOR_KEY, how="eq_hist", min_alpha=60), px=1)
    buffer = io.BytesIO()
    image.to_pil().save(buffer, format="PNG")
    return buffer.getvalue()


def write_thumbnail(projection: Path, target: Path) -> None:
    """Render the thumbnail of ``projection`` and put it at ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(target)
    temp.write_bytes(render_projection(projection))
    temp.replace(target)
