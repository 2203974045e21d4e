"""Atomic writes: a reader sees a file or a folder whole, or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from qkscale.errors import StoreError
from qkscale.store.lock import STALE_S, pid_alive

TEMP = ".tmp-"
# What reading a damaged file raises (besides a StoreError of our own): turned into one line.
DAMAGE = (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error, pa.ArrowException)


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn what a damaged or missing ``path`` raises while it is read into a one-line StoreError naming it."""
    try:
        yield
    except StoreError:
        raise
    except DAMAGE as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path} cannot be read ({reason}); `qkscale verify` checks the whole store") from None


def _host_tag(host: str) -> str:
    return hashlib.sha1(host.encode()).hexdigest()[:8]


def temp_sibling(path: Path) -> Path:
    """A unique temporary path beside ``path`` (same file system, so a rename is atomic).

    Its name records its owner (a tag of the host, the pid), so that cleanup can tell a temp that
    a live writer is filling from one that a dead writer left: ``.tmp-NAME.HOSTTAG.PID.RANDOM``.
    """
    owner = f"{_host_tag(socket.gethostname())}.{os.getpid()}"
    return path.with_name(f"{TEMP}{path.name}.{owner}.{uuid.uuid4().hex[:8]}")


def _newest_mtime(path: Path) -> float:
    try:
        times = [path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())] if path.is_dir() else []
        return max(times) if times else path.stat().st_mtime
    except OSError:
        return 0.0


def temp_owner_gone(temp: Path, stale_s: float) -> bool:
    """Whether the writer of ``temp`` is gone: a dead pid on this host, or no change for ``stale_s`` elsewhere."""
    parts = temp.name.rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return True  # an older qkscale's temp: its owner is not recorded
    tag, pid = parts[1], int(parts[2])
    if tag == _host_tag(socket.gethostname()):
        return pid != os.getpid() and not pid_alive(pid)
    return time.time() - _newest_mtime(temp) > stale_s


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, flush it to disk, then rename it over ``path``."""
    temp = temp_sibling(path)
    try:
        with temp.open("w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk leaves no half-written temp behind
        raise


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
    """Remove what interrupted writers left behind in ``folder``: temps whose owner is gone.

    Temps of live writers (a task still finishing, another process) are left alone.
    """
    if folder.is_dir():
        for stale in folder.glob(f"{TEMP}*"):
            if temp_owner_gone(stale, STALE_S):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
