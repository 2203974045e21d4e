"""One writer per store: a lock file that names its holder, taken over when the holder is gone.

Every writer (extract, run/submit, project, metrics, verify --repair) holds ``STORE/writer.lock``
while it writes; readers (inspect, status, serve) never look at it. The file is created with
``O_EXCL``, so of two writers that start together one wins and the other fails at once with one
line naming the holder. A holder is gone when its pid is dead on this host, or, for a holder on
another host, when its heartbeat (the file's mtime, touched every :data:`HEARTBEAT_S` seconds
while the lock is held) is older than :data:`STALE_S`. A gone holder's lock is taken over with a
warning. A lock is re-entrant within a process: a job's coordinator holds it, and the stages it
runs (and their Dask tasks) write under it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qkscale.errors import QKScaleWarning, StoreError

LOCK = "writer.lock"
HEARTBEAT_S = float(os.environ.get("QKSCALE_HEARTBEAT_S", 10))  # how often a holder touches its lock
STALE_S = 6 * HEARTBEAT_S  # a lock from another host untouched this long has lost its holder

_held: dict[Path, int] = {}  # locks this process holds, with their depth (re-entrant)
_held_guard = threading.Lock()


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


def host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_lock(store: Path) -> dict[str, Any] | None:
    """The holder recorded in ``store``'s lock (pid, host, command, since, heartbeat age), or None."""
    path = Path(store) / LOCK
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "command": "an unreadable lock", "since": "?", "age_s": 0.0}
    if not isinstance(holder, dict):
        holder = {}
    return {**holder, "age_s": age}


def holder_gone(holder: dict[str, Any]) -> bool:
    """Whether the writer that holds a lock has stopped without releasing it."""
    pid = holder.get("pid")
    if holder.get("host") == host() and isinstance(pid, int):
        return not pid_alive(pid)
    return holder.get("age_s", 0.0) > STALE_S


def describe_holder(store: Path, holder: dict[str, Any]) -> str:
    return (
        f"store {store} is being written by '{holder.get('command')}' "
        f"(pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')})"
    )


def check_unlocked(store: str | Path) -> None:
    """Raise :class:`StoreLockedError` if a live writer holds ``store``'s lock (a check, not a lock)."""
    holder = read_lock(Path(store))
    if holder is not None and not holder_gone(holder) and not holds_lock(store):
        raise StoreLockedError(describe_holder(Path(store), holder))


def _create(path: Path, command: str, job: str | None) -> None:
    """Create the lock file or raise FileExistsError."""
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": host(), "command": command, "since": since, "job": job}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _acquire(store: Path, command: str, job: str | None) -> None:
    path = store / LOCK
    for _ in range(3):
        try:
            _create(path, command, job)
            return
        except FileExistsError:
            holder = read_lock(store)
            if holder is None:
                continue  # released meanwhile
            restarted = job is not None and holder.get("job") == job  # the scheduler reran a lost coordinator
            if not (restarted or holder_gone(holder)):
                raise StoreLockedError(describe_holder(store, holder)) from None
            warnings.warn(
                f"taking over the lock of store {store} from '{holder.get('command')}' "
                f"(pid {holder.get('pid')} on {holder.get('host')}), which is gone",
                QKScaleWarning,
                stacklevel=4,
            )
            path.unlink(missing_ok=True)
    raise StoreLockedError(f"store {store} is being locked and unlocked by other writers; try again")


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


def holds_lock(store: str | Path) -> bool:
    """Whether this process holds ``store``'s lock."""
    return Path(store).resolve() in _held


@contextmanager
def writer_lock(store: str | Path, command: str, job: str | None = None):
    """Hold ``store``'s writer lock for the ``with`` block (re-entrant within this process).

    ``job``: the id of the job whose coordinator takes the lock; a rerun of that coordinator (the
    scheduler restarts a task whose worker died) takes the lock over from its lost predecessor.
    """
    store = Path(store).resolve()
    with _held_guard:
        if store in _held:
            _held[store] += 1
            nested = True
        else:
            store.mkdir(parents=True, exist_ok=True)
            _acquire(store, command, job)
            _held[store] = 1
            nested = False
    stop = threading.Event()
    beat = None
    if not nested:
        beat = threading.Thread(target=_heartbeat, args=(store / LOCK, stop), daemon=True, name="qkscale-lock")
        beat.start()
    try:
        yield
    finally:
        with _held_guard:
            _held[store] -= 1
            last = _held[store] == 0
            if last:
                del _held[store]
        if beat is not None:
            stop.set()
            beat.join()
        if last:
            (store / LOCK).unlink(missing_ok=True)
