"""Image view (vision-model stores): the image as the model saw it, one patch outlined, every patch
shaded by that token's attention."""

from __future__ import annotations

import io

import numpy as np


def patch_grid(store_preprocessing: dict) -> tuple[int, int]:
    """(rows, columns) of the model's patch grid."""
    rows, columns = store_preprocessing["grid"]
    return int(rows), int(columns)


def image_view(thumbnail_jpeg: bytes, grid: tuple[int, int], weights: np.ndarray | None, patch: tuple[int, int] | None):
    """The thumbnail in patch units (x: column, y: row from the top), attention shading and an outline.

    ``weights`` holds one value per patch, row-major (the selected token's attention over patches).
    """
    from PIL import Image

    from qkscale.dashboard.plotting import hv

    rows, columns = grid
    rgb = np.asarray(Image.open(io.BytesIO(thumbnail_jpeg)).convert("RGB"))
    bounds = (0, -rows, columns, 0)  # y runs downwards from the top row
    layers = [hv.RGB(rgb, bounds=bounds).opts(tools=["tap"])]
    if weights is not None:
        shading = weights.reshape(rows, columns)
        shading = shading / shading.max() if shading.max() > 0 else shading
        layers.append(hv.Image(shading, bounds=bounds).opts(cmap="fire", alpha=0.55, tools=["tap", "hover"]))
    if patch is not None:
        r, c = patch
        layers.append(hv.Rectangles([(c, -r - 1, c + 1, -r)]).opts(fill_alpha=0, line_color="cyan", line_width=3))
    return hv.Overlay(layers).opts(
        width=480,
        height=int(480 * rows / columns),
        xaxis=None,
        yaxis=None,
        toolbar=None,
        title="click a patch: shading = its attention",
    )


def patch_at(grid: tuple[int, int], x: float, y: float) -> tuple[int, int] | None:
    """The patch (row, column) under a click in the image's coordinates, or None outside it."""
    rows, columns = grid
    r, c = int(np.floor(-y)), int(np.floor(x))
    return (r, c) if 0 <= r < rows and 0 <= c < columns else None
