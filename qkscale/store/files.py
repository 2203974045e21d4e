"""Atomic writes: a reader sees a file or a folder whole, or not at all."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def temp_sibling(path: Path) -> Path:
    """A unique temporary path beside ``path`` (same file system, so a rename is atomic)."""
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, flush it to disk, then rename it over ``path``."""
    temp = temp_sibling(path)
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def write_parquet_atomic(path: Path, table: pa.Table, **options: Any) -> None:
    """Write ``table`` to a temp file, flush it to disk, then rename it over ``path``."""
    temp = temp_sibling(path)
    try:
        with temp.open("wb") as handle:
            pq.write_table(table, handle, **options)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file or folder (after a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_dir(temp: Path, final: Path) -> bool:
    """Flush a finished temp folder to disk and rename it to ``final``.

    Returns False (and removes the temp) if ``final`` is already there: shards are deterministic,
    so a second writer of the same shard has nothing to add.
    """
    for file in temp.iterdir():
        fsync_path(file)
    try:
        os.rename(temp, final)
        fsync_path(final.parent)
        return True
    except OSError:
        if final.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
            return False
        raise


def remove_temps(folder: Path) -> None:
    """Remove what interrupted writers left behind in ``folder``."""
    if folder.is_dir():
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
