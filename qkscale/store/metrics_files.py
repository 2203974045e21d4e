"""Head metrics on disk: one folder, replaced whole by an atomic rename.

```
STORE/metrics/heads.parquet       one row per (layer, head): statistics and `order` (matrix view)
STORE/metrics/offsets.parquet     mean attention mass by relative offset, one row per head
STORE/metrics/similarity.parquet  head x head similarity, rows and columns named "L{layer}H{head}"
```
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from qkscale.store.files import commit_dir, reading, temp_sibling

METRICS = "metrics"
HEADS = "heads.parquet"
OFFSETS = "offsets.parquet"
SIMILARITY = "similarity.parquet"


def head_labels(table: pd.DataFrame) -> list[str]:
    return [f"L{layer}H{head}" for layer, head in zip(table["layer"], table["head"], strict=True)]


def write_metrics(
    root: Path, table: pd.DataFrame, profiles: np.ndarray, similarity: np.ndarray, bins: list[str]
) -> None:
    """Write the metrics folder into a temp folder, then swap it in for any previous one."""
    final = root / METRICS
    temp = temp_sibling(final)
    temp.mkdir()
    try:
        labels = head_labels(table)
        table.to_parquet(temp / HEADS, index=False)
        pd.DataFrame(profiles, index=labels, columns=bins).to_parquet(temp / OFFSETS)
        pd.DataFrame(similarity, index=labels, columns=labels).to_parquet(temp / SIMILARITY)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    # Swap: the old metrics stay readable until the new ones are in place (a crash in between
    # leaves them aside as a temp folder, which the next run removes).
    old = temp_sibling(final)
    if final.exists():
        os.rename(final, old)
    try:
        commit_dir(temp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.rename(old, final)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_metrics(root: Path, name: str) -> pd.DataFrame:
    with reading(root / METRICS / name):
        return pd.read_parquet(root / METRICS / name)
