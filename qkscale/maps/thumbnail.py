"""A head's matrix-view thumbnail: every point of its projection datashaded once, written as PNG by `project`.

Queries and keys get two colours (AttentionViz's convention). The projection file is aggregated
one row group at a time (counts add up exactly), so memory is set by the row group.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qkscale.maps.order import projection_extent
from qkscale.store.files import temp_sibling
from qkscale.store.projections import key_flags, projection_key

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
    """PNG bytes of the x-y plane of the projection file at ``projection``, every point counted.

    Counts are binned as a Datashader canvas bins them (``floor((x - x0) * pixels / span)``, the
    last edge inside), one row group at a time with ``bincount``, then shaded by Datashader.
    """
    import datashader.transfer_functions as tf
    import xarray as xr

    file = pq.ParquetFile(projection)
    low, high = projection_extent(file)
    ranges = [padded(low[axis], high[axis]) for axis in (0, 1)]
    counts = np.zeros(2 * pixels * pixels, np.int64)
    for batch in file.iter_batches(columns=["x", "y", "kind"]):
        is_key = key_flags(batch.column("kind"))
        i, j = (_bins(batch.column(axis).to_numpy(), *ranges[n], pixels) for n, axis in enumerate(("x", "y")))
        counts += np.bincount((j * pixels + i) * 2 + is_key, minlength=len(counts))
    centres = [lo + (np.arange(pixels) + 0.5) * (hi - lo) / pixels for lo, hi in ranges]
    agg = xr.DataArray(
        counts.reshape(pixels, pixels, 2).astype(np.uint32),
        coords=[centres[1], centres[0], ["q", "k"]],
        dims=["y", "x", "kind"],
    )
    image = tf.spread(tf.shade(agg, color_key=COLOR_KEY, how="eq_hist", min_alpha=60), px=1)
    buffer = io.BytesIO()
    image.to_pil().save(buffer, format="PNG")
    return buffer.getvalue()


def _bins(values: np.ndarray, low: float, high: float, pixels: int) -> np.ndarray:
    return np.clip(((values.astype(np.float64) - low) * (pixels / (high - low))).astype(np.int64), 0, pixels - 1)


def write_thumbnail(projection: Path, target: Path) -> None:
    """Render the thumbnail of ``projection`` and put it at ``target`` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(target)
    try:
        temp.write_bytes(render_projection(projection))
        temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
