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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qkscale.store.files import fsync_path, reading, temp_sibling

PROJECTIONS = "projections"
_RECORD_KEY = b"qkscale"
_FILE = re.compile(r"L(\d+)-H(\d+)\.parquet")
AXES = ("x", "y", "z")
_KINDS = pa.array(["q", "k"])


def projection_key(method: str, dims: int) -> str:
    return f"{method}-{dims}d"


def projection_path(root: Path, method: str, dims: int, layer: int, head: int) -> Path:
    return root / PROJECTIONS / projection_key(method, dims) / f"L{layer:03d}-H{head:03d}.parquet"


def key_flags(kind: pa.DictionaryArray) -> np.ndarray:
    """A projection's ``kind`` column (dictionary-encoded 'q'/'k') as ``uint8``: 0 query, 1 key."""
    return (np.asarray(kind.dictionary.to_pylist())[kind.indices.to_numpy()] == "k").astype(np.uint8)


class ProjectionWriter:
    """Writes one head's projection chunk by chunk (a Parquet row group each), then renames it into place."""

    def __init__(self, path: Path, dims: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.temp = path, temp_sibling(path)
        fields = [("token", pa.int64()), ("kind", pa.dictionary(pa.int8(), pa.string()))]
        self.schema = pa.schema(fields + [(axis, pa.float32()) for axis in AXES[:dims]])
        self._handle = self.temp.open("wb")
        self._writer = pq.ParquetWriter(self._handle, self.schema)

    def write(self, tokens: np.ndarray, kinds: np.ndarray, coords: np.ndarray) -> None:
        """Append rows: token ids, kinds (0 query, 1 key) and ``[n, dims]`` coordinates."""
        columns = [
            pa.array(tokens, pa.int64()),
            pa.DictionaryArray.from_arrays(pa.array(kinds, pa.int8()), _KINDS),
            *(pa.array(np.ascontiguousarray(values, dtype=np.float32)) for values in coords.T),
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def commit(self, record: dict, before_rename: Callable[[Path], None] | None = None) -> None:
        """Store ``record`` in the footer, flush to disk and rename into place.

        ``before_rename(temp)`` runs on the finished file first (the point map is made from it).
        """
        try:
            self._writer.add_key_value_metadata({_RECORD_KEY.decode(): json.dumps(record)})
            self._writer.close()
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            if before_rename is not None:
                before_rename(self.temp)
            os.replace(self.temp, self.path)
            fsync_path(self.path.parent)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the unfinished file."""
        self._handle.close()
        self.temp.unlink(missing_ok=True)


def read_projection(path: Path) -> pd.DataFrame:
    with reading(path):
        return pq.read_table(path).to_pandas()


def read_record(path: Path) -> dict[str, Any]:
    """How the projection at ``path`` was made (its schema metadata), without reading its data."""
    with reading(path):
        metadata = pq.read_metadata(path).metadata or {}
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
