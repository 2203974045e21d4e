"""One writer per store: a second writer fails at once naming the first; a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import qkscale
from qkscale.errors import QKScaleWarning
from qkscale.project import project
from qkscale.store import layout
from qkscale.store.files import remove_temps, temp_sibling
from qkscale.store.lock import LOCK, StoreLockedError, read_lock, writer_lock


def _cli(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "qkscale.cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), process.communicate()[1] if process.poll() is not None else "timed out"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def store_copy(builtin_store, tmp_path) -> qkscale.Store:
    shutil.copytree(builtin_store.path, tmp_path / "store")
    return qkscale.open_store(tmp_path / "store")


def test_second_writer_fails_at_once_naming_the_first(store_copy, run_cli):
    first = _cli("project", store_copy.path, "--method", "umap", "--sample", "300")
    try:
        _wait_for(store_copy.path / LOCK, first)
        holder = read_lock(store_copy.path)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        assert holder["command"] == "qkscale project"

        started = time.monotonic()
        code, _, stderr = run_cli("metrics", store_copy.path, "--force")
        assert code == 2 and len(stderr.strip().splitlines()) == 1
        assert f"is being written by 'qkscale project' (pid {first.pid} on {socket.gethostname()} since" in stderr
        assert time.monotonic() - started < 30, "the second writer fails at once, it does not wait"
        assert not store_copy.has_metrics

        code, stdout, _ = run_cli("inspect", store_copy.path)  # readers never need the lock
        assert code == 0 and "tokens" in stdout
    finally:
        first.kill()
        first.communicate()


def test_dead_writers_lock_is_taken_over_with_a_warning(store_copy, run_cli):
    record = {"pid": _dead_pid(), "host": socket.gethostname(), "command": "qkscale project", "since": "then"}
    (store_copy.path / LOCK).write_text(json.dumps(record))
    code, _, stderr = run_cli("metrics", store_copy.path)
    assert code == 0, stderr
    assert "warning: taking over the lock" in stderr and "'qkscale project'" in stderr
    assert store_copy.has_metrics
    assert not (store_copy.path / LOCK).exists(), "the lock is released when the writer ends"


def test_lock_of_another_host_is_respected_until_its_heartbeat_stops(store_copy):
    path = store_copy.path / LOCK
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "qkscale run", "since": "then"}))
    with pytest.raises(StoreLockedError, match="pid 1 on elsewhere.example"):
        project(store_copy, method="pca", layers=[0], heads=[0], progress=False)
    stale = time.time() - 3600
    os.utime(path, (stale, stale))
    with pytest.warns(QKScaleWarning, match="which is gone"):
        project(store_copy, method="pca", layers=[0], heads=[0], progress=False)


def test_lock_is_reentrant_and_released_after_a_failure(store_copy):
    with writer_lock(store_copy.path, "qkscale run", job="job-1"):
        project(store_copy, method="pca", layers=[0], heads=[0], progress=False)  # nested: allowed
        assert read_lock(store_copy.path)["command"] == "qkscale run"
    assert read_lock(store_copy.path) is None
    with pytest.raises(RuntimeError), writer_lock(store_copy.path, "qkscale metrics"):
        raise RuntimeError("boom")
    assert read_lock(store_copy.path) is None


def test_cleanup_removes_only_temps_of_dead_owners(store_copy):
    shards = store_copy.path / layout.SHARDS
    live = temp_sibling(shards / "00007")  # this process's pid: alive
    live.mkdir()
    dead = shards / live.name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    dead.mkdir()
    legacy = shards / ".tmp-00008-123-abcdef12"  # an older qkscale's temp, owner unknown
    legacy.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = shards / live.name.replace(f".{os.getpid()}.", f".{sleeper.pid}.")
        other.mkdir()
        remove_temps(shards)
        assert live.exists() and other.exists(), "temps of live writers are kept"
        assert not dead.exists() and not legacy.exists(), "temps of dead writers are removed"
    finally:
        sleeper.kill()
        sleeper.wait()
    remove_temps(shards)
    assert not other.exists()
