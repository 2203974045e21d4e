"""Sentence views of one document: the text shaded by attention, BertViz-style lines, a heatmap,
and the model view (every head's attention for the document on one canvas)."""

from __future__ import annotations

import html

import numpy as np

from qkscale.dashboard.matrix import compose_tiles, tile_grid, tile_labels

LINE_COLOUR = "#1f77b4"
MODEL_TILE_PIXELS = 64


def sentence_html(texts: list[str], weights: np.ndarray | None, selected: int | None, kind: str = "q") -> str:
    """The document's tokens, each shaded by how much the selected token attends to it (or is attended by it)."""
    spans = []
    for i, text in enumerate(texts):
        alpha = 0.0 if weights is None else float(weights[i])
        style = f"background: rgba(255, 127, 14, {min(1.0, alpha * 1.5):.3f}); padding: 1px 2px; border-radius: 3px;"
        if i == selected:
            style += " outline: 2px solid black; font-weight: bold;"
        title = "" if weights is None else f' title="{alpha:.3f}"'
        spans.append(f'<span class="qk-token" style="{style}"{title}>{html.escape(text)}</span>')
    what = "attends to" if kind == "q" else "is attended by"
    legend = (
        ""
        if selected is None
        else f"<div style='color:#666'>shading: how much the selected token {what} each token</div>"
    )
    return f"<div class='qk-sentence' style='line-height: 1.9'>{' '.join(spans)}</div>{legend}"


def attention_lines(texts: list[str], weights: np.ndarray, selected: int | None = None, kind: str = "q"):
    """BertViz-style lines: queries on the left, keys on the right, line opacity = attention weight."""
    from qkscale.dashboard.plotting import hv

    n = len(texts)
    rows, cols = np.nonzero(weights > 0.01)
    if selected is not None:
        keep = rows == selected if kind == "q" else cols == selected
        rows, cols = rows[keep], cols[keep]
    segments = [(0.0, -float(i), 1.0, -float(j), float(weights[i, j])) for i, j in zip(rows, cols, strict=True)]
    lines = hv.Segments(segments, ["x0", "y0", "x1", "y1"], ["weight"]).opts(
        color=LINE_COLOUR, alpha=hv.dim("weight").norm() * 0.9 + 0.05, line_width=2
    )
    left = hv.Labels([(-0.02, -float(i), t) for i, t in enumerate(texts)], ["x", "y"], "text").opts(
        text_align="right", text_font_size="9pt"
    )
    right = hv.Labels([(1.02, -float(i), t) for i, t in enumerate(texts)], ["x", "y"], "text").opts(
        text_align="left", text_font_size="9pt"
    )
    return (lines * left * right).opts(
        width=420,
        height=max(200, 16 * n + 60),
        xaxis=None,
        yaxis=None,
        xlim=(-0.7, 1.7),
        ylim=(-n + 0.3, 1.0),
        toolbar=None,
        title="queries (left) → keys (right)",
    )


def attention_heatmap(texts: list[str], weights: np.ndarray):
    """The document's ``[T, T]`` attention as a heatmap: rows are queries, columns keys."""
    from qkscale.dashboard.plotting import hv

    n = len(texts)
    labels = [f"{i}:{t}" for i, t in enumerate(texts)]
    cells = [(labels[j], labels[i], float(weights[i, j])) for i in range(n) for j in range(n)]
    size = max(300, min(900, 14 * n + 120))
    return hv.HeatMap(cells, ["key", "query"], "weight").opts(
        cmap="Blues",
        width=size,
        height=size,
        xrotation=90,
        invert_yaxis=True,
        tools=["hover"],
        colorbar=True,
        title="attention (rows: queries, columns: keys)",
    )


def _tile(weights: np.ndarray, pixels: int = MODEL_TILE_PIXELS) -> np.ndarray:
    """A ``[pixels, pixels]`` nearest-neighbour resampling of an attention matrix, scaled to its maximum."""
    n = len(weights)
    if n == 0:
        return np.zeros((pixels, pixels))
    index = np.minimum((np.arange(pixels) * n) // pixels, n - 1)
    tile = weights[np.ix_(index, index)]
    return tile / tile.max() if tile.max() > 0 else tile  # each head's own scale: its pattern shows


def model_view(attention_by_head: dict[tuple[int, int], np.ndarray]):
    """Every head's attention for one document as small heatmaps on one canvas (layer rows, head columns).

    Returns the element and the grid for :func:`qkscale.dashboard.matrix.head_at`.
    """
    from qkscale.dashboard.plotting import hv

    heads = list(attention_by_head)
    grid = tile_grid(heads)
    tiles = {h: _tile(w) for h, w in attention_by_head.items()}
    canvas, bounds = compose_tiles(grid, tiles, np.nan)
    n_columns, n_rows = int(bounds[2]), int(bounds[3])
    image = hv.Image(canvas, bounds=bounds).opts(
        cmap="Blues", clim=(0, 1), tools=["tap"], clipping_colors={"NaN": "white"}
    )
    element = (image * tile_labels(grid, {h: f"L{h[0]}H{h[1]}" for h in heads})).opts(
        width=min(1100, 70 * n_columns + 40),
        height=min(900, 70 * n_rows + 60),
        xaxis=None,
        yaxis=None,
        toolbar=None,
        title="model view (rows: queries, columns: keys; each head scaled to its maximum): click a head",
    )
    return element, grid
