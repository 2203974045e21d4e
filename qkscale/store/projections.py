"""Projections on disk: one Parquet file per (method, dims, layer, head), written atomically.

```
STORE/projections/umap-2d/L000-H003.parquet   token (int64), kind ('q'|'k'), x, y[, z] (float32)
```
The file's schema metadata holds the record of how it was made (backend, library, sample, metric,
normalisation, trustworthiness, seconds), readable without reading the coordinates.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qkscale.store.files import fsync_path, temp_sibling

PROJECTIONS = "projections"
_RECORD_KEY = b"qkscale"
_FILE = re.compile(r"L(\d+)-H(\d+)\.parquet")
AXES = ("x", "y", "z")


def projection_key(method: str, dims: int) -> str:
    return f"{method}-{dims}d"


def projection_path(root: Path, method: str, dims: int, layer: int, head: int) -> Path:
    return root / PROJECTIONS / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}.parquet"


def write_projection(path: Path, tokens: np.ndarray, kinds: np.ndarray, coords: np.ndarray, record: dict) -> None:
    """Write one head's projection to a temp file, flush it, and rename it into place."""
    columns: dict[str, pa.Array] = {
        "token": pa.array(tokens, pa.int64()),
        "kind": pa.DictionaryArray.from_arrays(pa.array(kinds, pa.int8()), pa.array(["q", "k"])),
    }
    for axis, values in zip(AXES[: coords.shape[1]], coords.T, strict=True):
        columns[axis] = pa.array(np.ascontiguousarray(values, dtype=np.float32))
    table = pa.table(columns).replace_schema_metadata({_RECORD_KEY: json.dumps(record).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_sibling(path)
    try:
        with temp.open("wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_path(path.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_projection(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def read_record(path: Path) -> dict[str, Any]:
    """How the projection at ``path`` was made (its schema metadata), without reading its data."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(_RECORD_KEY, b"{}"))


def list_projections(root: Path) -> dict[str, list[tuple[int, int]]]:
    """``{'umap-2d': [(layer, head), ...]}`` for every projection file in the store."""
    found: dict[str, list[tuple[int, int]]] = {}
    folder = root / PROJECTIONS
    if folder.is_dir():
        for kind in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            heads = sorted((int(m[1]), int(m[2])) for f in kind.iterdir() if (m := _FILE.fullmatch(f.name)))
            if heads:
                found[kind.name] = heads
    return found
