"""A head's point map (spatially ordered points + raster pyramid), written beside its 2D projection.

```
STORE/maps/umap-2d/L000-H003/   the columns of :mod:`qkscale.maps.order`, pyramid-LL-keys.npy, pyramid-LL-counts.npy
```
The projection stage writes the map from the finished projection file just before renaming that
file into place, so a committed 2D projection always has its map; a map left without its
projection (an interrupted run) is replaced when the head is projected again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from qkscale.maps.order import GRID_SIZE, OrderedPoints, order_points
from qkscale.maps.pyramid import Pyramid
from qkscale.store.files import fsync_path, temp_sibling
from qkscale.store.projections import projection_key

MAPS = "maps"


def map_path(root: Path, method: str, dims: int, layer: int, head: int) -> Path:
    return root / MAPS / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}"


def write_map(projection: Path, target: Path, size: int = GRID_SIZE) -> None:
    """Order the points of the 2D projection file ``projection``, build their pyramid, put the folder at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(target)
    temp.mkdir()
    try:
        grid = order_points(projection, temp, size)
        ordered = OrderedPoints(temp)
        kind = np.asarray(ordered.columns["kind"]).astype(np.int64)
        Pyramid.build(grid, ordered.columns["x"], ordered.columns["y"], kind, 2).save(temp)
        del ordered
        for file in temp.iterdir():
            fsync_path(file)
        _replace_dir(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, moving an older ``target`` aside first (then removing it)."""
    old = temp_sibling(target) if target.exists() else None
    if old is not None:
        target.rename(old)
    new.rename(target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
