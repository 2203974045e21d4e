"""What `project` writes beside each projection for the dashboard: the head's point map and its thumbnail.

```
STORE/maps/umap-2d/L000-H003/         the columns of :mod:`qkscale.maps.order` and the pyramid's levels
STORE/thumbnails/umap-2d/L000-H003.png   the matrix view's tile (2D and 3D projections)
```
The projection stage writes both from the finished projection file just before renaming that file
into place, so a committed projection has its views; views left without their projection (an
interrupted run) are replaced when the head is projected again, and `project` makes the views of
an older store's projections without projecting again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qkscale.maps.attributes import ATTRIBUTES, CATEGORIES, PointAttributes
from qkscale.maps.order import GRID_SIZE, OrderedPoints, order_points
from qkscale.maps.pyramid import Pyramid
from qkscale.maps.thumbnail import thumbnail_path, write_thumbnail
from qkscale.store import Store
from qkscale.store.files import fsync_path, temp_sibling
from qkscale.store.projections import projection_key

MAPS = "maps"
COUNTED = {name: len(values) for name, values in CATEGORIES.items()}
SUMMED = tuple(name for name in ATTRIBUTES if name not in CATEGORIES)


def map_path(root: Path, method: str, dims: int, layer: int, head: int) -> Path:
    return root / MAPS / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}"


def views_exist(root: Path, method: str, dims: int, layer: int, head: int) -> bool:
    """True if the head's thumbnail (and, in 2D, its map) are in place."""
    has_map = dims != 2 or (map_path(root, method, dims, layer, head) / "grid.json").is_file()
    return has_map and thumbnail_path(root, method, dims, layer, head).is_file()


def write_views(store: Store, projection: Path, method: str, dims: int, layer: int, head: int) -> None:
    """Write the thumbnail and (for 2D) the point map of the projection file ``projection``."""
    write_thumbnail(projection, thumbnail_path(store.path, method, dims, layer, head))
    if dims == 2:
        write_map(projection, map_path(store.path, method, dims, layer, head), PointAttributes(store, layer, head))


def write_map(projection: Path, target: Path, attributes: PointAttributes | None = None, size: int = GRID_SIZE) -> None:
    """Order the points of the 2D projection file ``projection``, build their pyramid, put the folder at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(target)
    temp.mkdir()
    try:
        types = ATTRIBUTES if attributes is not None else {}
        grid = order_points(projection, temp, size, attributes=attributes, attribute_types=types)
        ordered = OrderedPoints(temp)
        counted = {name: n for name, n in COUNTED.items() if name in types}
        summed = tuple(name for name in SUMMED if name in types)
        Pyramid.build(grid, ordered.columns, counted, summed).save(temp)
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
