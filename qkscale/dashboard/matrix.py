"""Matrix view: every head's thumbnail (written by `project`) on one canvas, a tap on a tile selects that head."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.maps.thumbnail import THUMBNAIL_PIXELS, thumbnail_path
from qkscale.store import Store

TILE = 1.0  # data units per tile; tiles sit on an integer grid (column = head, row = layer)
GAP = 0.06
ORDERINGS = ("layer / head", "head similarity")
MAX_CANVAS_PIXELS = 1600  # a 32 x 32-head model gets 42-px tiles, not a 65 MB image
MIN_TILE_PIXELS = 24
TILE_BACKGROUND = (245, 245, 245, 255)  # light grey: each tile stands out from the white gaps
MISSING_TILE = (215, 215, 215, 255)  # darker grey, no points: this head has no such projection
NO_THUMBNAIL = (250, 225, 200, 255)  # pale orange: projected before `project` wrote thumbnails


def tile_grid(heads: list[tuple[int, int]], columns: int | None = None) -> dict[tuple[int, int], tuple[int, int]]:
    """Grid cell (column, row) of each head: layer by layer, or wrapped into ``columns`` in list order."""
    if columns is None:
        layers = sorted({layer for layer, _ in heads})
        return {(layer, head): (head, len(layers) - 1 - layers.index(layer)) for layer, head in heads}
    rows = math.ceil(len(heads) / columns)
    return {h: (i % columns, rows - 1 - i // columns) for i, h in enumerate(heads)}


def head_at(grid: dict[tuple[int, int], tuple[int, int]], x: float, y: float) -> tuple[int, int] | None:
    """The head whose tile holds the data point (x, y), or None between tiles."""
    cell = (math.floor(x / TILE), math.floor(y / TILE))
    return next((head for head, position in grid.items() if position == cell), None)


def ordered_heads(heads: list[tuple[int, int]], ordering: str, metrics: pd.DataFrame | None) -> list[tuple[int, int]]:
    """``heads`` by layer then head, or by the metrics' head-similarity order (similar heads adjacent)."""
    if ordering == "head similarity" and metrics is not None:
        rank = {(int(r.layer), int(r.head)): int(r.order) for r in metrics.itertuples()}
        return sorted(heads, key=lambda h: rank.get(h, len(rank)))
    return sorted(heads)


def metric_label(metrics: pd.DataFrame | None, metric: str | None) -> dict[tuple[int, int], str]:
    """`` entropy 2.31`` for every head, or nothing without metrics."""
    if metrics is None or not metric or metric not in metrics:
        return {}
    heads = zip(metrics["layer"].tolist(), metrics["head"].tolist(), metrics[metric].tolist(), strict=True)
    return {(int(layer), int(head)): f" {metric} {value:.3g}" for layer, head, value in heads}  # any column name


def tile_pixels(grid: dict, canvas_pixels: int = MAX_CANVAS_PIXELS) -> int:
    """Pixels per tile so that the composed matrix stays about ``canvas_pixels`` wide (large models)."""
    n_columns = 1 + max(c for c, _ in grid.values())
    n_rows = 1 + max(r for _, r in grid.values())
    return max(MIN_TILE_PIXELS, min(THUMBNAIL_PIXELS, int(canvas_pixels / (1 + 2 * GAP) / max(n_columns, n_rows))))


def compose_tiles(grid: dict, images: dict, background) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Paste one square image per head into a single array laid out as ``grid`` (bottom row last).

    Returns the array and its bounds in tile units, so that :func:`head_at` maps clicks back to
    heads. One image draws far faster in the browser than one glyph per head.
    """
    first = next(iter(images.values()))
    pixels = first.shape[0]
    gap = max(1, round(pixels * GAP))
    step = pixels + 2 * gap
    n_columns = 1 + max(c for c, _ in grid.values())
    n_rows = 1 + max(r for _, r in grid.values())
    canvas = np.empty((n_rows * step, n_columns * step, *first.shape[2:]), first.dtype)
    canvas[...] = background
    for head, (column, row) in grid.items():
        top = (n_rows - 1 - row) * step + gap
        left = column * step + gap
        canvas[top : top + pixels, left : left + pixels] = images[head]
    return canvas, (0.0, 0.0, float(n_columns * TILE), float(n_rows * TILE))


def label_places(grid: dict, text: dict[tuple[int, int], str]) -> list[tuple[float, float, str]]:
    """Each head's text with the place of its label: the top left of its tile."""
    return [(column * TILE + GAP, (row + 1) * TILE - GAP, text[head]) for head, (column, row) in grid.items()]


def tile_labels(grid: dict, text: dict[tuple[int, int], str]):
    """An ``hv.Labels`` with each head's text at the top left of its tile."""
    from qkscale.dashboard.plotting import hv

    return hv.Labels(label_places(grid, text), ["x", "y"], "text").opts(
        text_font_size="8pt", text_align="left", text_baseline="top", text_color="black"
    )


@dataclass(frozen=True)
class MatrixImage:
    """The matrix as data: the composed thumbnails, their bounds in tile units, each head's label and cell."""

    canvas: np.ndarray  # (rows, columns, 4) uint8, the top row first
    bounds: tuple[float, float, float, float]  # left, bottom, right, top
    labels: list[tuple[float, float, str]]  # x, y (top left of a tile) and text
    grid: dict[tuple[int, int], tuple[int, int]]
    title: str
    without_thumbnail: int  # projected heads whose thumbnail is missing (drawn pale orange)

    @functools.cached_property
    def rgba(self) -> np.ndarray:
        """The canvas as Bokeh's ``image_rgba`` takes it: one uint32 per pixel, the bottom row first (made once)."""
        rows, columns = self.canvas.shape[:2]
        return np.ascontiguousarray(self.canvas[::-1]).view(np.uint32).reshape(rows, columns)

    @property
    def size(self) -> tuple[int, int]:
        """The figure's width and height in pixels."""
        n_columns, n_rows = int(self.bounds[2]), int(self.bounds[3])
        return min(1400, 110 * n_columns + 40), min(1100, 110 * n_rows + 60)


def matrix_image(
    store: Store,
    heads: list[tuple[int, int]],
    projected: set[tuple[int, int]],
    method: str = "umap",
    dims: int = 2,
    ordering: str = "layer / head",
    metrics: pd.DataFrame | None = None,
    metric: str | None = None,
) -> MatrixImage:
    """Every head's thumbnail (grey where not projected) on one RGBA canvas, with L/H and metric labels."""
    from PIL import Image

    order = ordered_heads(heads, ordering, metrics)
    grid = tile_grid(order, len(store.heads) if ordering == "head similarity" else None)
    pixels = tile_pixels(grid)
    images, without_thumbnail = {}, 0
    for layer, head in order:
        tile = Image.new("RGBA", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), MISSING_TILE)
        path = thumbnail_path(store.path, method, dims, layer, head)
        if (layer, head) in projected and path.is_file():
            png = Image.open(io.BytesIO(path.read_bytes())).convert("RGBA")
            tile = Image.alpha_composite(Image.new("RGBA", png.size, TILE_BACKGROUND), png)
        elif (layer, head) in projected:
            tile = Image.new("RGBA", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS), NO_THUMBNAIL)
            without_thumbnail += 1
        if pixels < THUMBNAIL_PIXELS:
            tile = tile.resize((pixels, pixels), Image.Resampling.BOX)
        images[(layer, head)] = np.asarray(tile)
    canvas, bounds = compose_tiles(grid, images, (255, 255, 255, 255))
    extra = metric_label(metrics, metric)
    labels = label_places(grid, {head: f"L{head[0]}H{head[1]}{extra.get(head, '')}" for head in order})
    title = f"{method} {dims}D · queries blue, keys orange · grey: not projected · click a head to open it"
    return MatrixImage(canvas, bounds, labels, grid, title, without_thumbnail)


def matrix_figure(image: MatrixImage, on_tap: Callable[[float, float], None]):
    """A Bokeh figure of ``image`` (one image and its labels) that calls ``on_tap(x, y)`` on every click.

    Made per session (a figure belongs to one document) from the image all sessions share.
    """
    from bokeh.events import Tap
    from bokeh.models import Range1d
    from bokeh.plotting import figure

    left, bottom, right, top = image.bounds
    width, height = image.size
    plot = figure(
        width=width,
        height=height,
        x_range=Range1d(left, right),
        y_range=Range1d(bottom, top),
        tools="tap",
        toolbar_location=None,
        title=image.title,
        x_axis_location=None,
        y_axis_location=None,
        css_classes=["qk-matrix"],
    )
    plot.grid.visible = False
    plot.image_rgba(image=[image.rgba], x=left, y=bottom, dw=right - left, dh=top - bottom)
    xs, ys, texts = (list(column) for column in zip(*image.labels, strict=True))
    plot.text(x=xs, y=ys, text=texts, text_font_size="8pt", text_align="left", text_baseline="top", text_color="black")
    plot.on_event(Tap, lambda event: None if event.x is None else on_tap(event.x, event.y))
    return plot
