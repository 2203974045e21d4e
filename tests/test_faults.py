"""Faults survived: a submitted job's coordinator killed, a whole cluster gone, a full disk, `project` SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import kill_dask, start_dask, stop_dask

import qkscale
from qkscale.jobs import job_status, read_job
from qkscale.project import project
from qkscale.store import layout
from qkscale.store.lock import LOCK, read_lock
from qkscale.store.projections import projection_path

EXTRACT = {"limit_docs": 48, "batch_size": 4, "max_length": 32, "layers": "0,5"}
DOCS_PER_SHARD = 4  # 12 shards


def _spec_file(tmp_path: Path, name: str, out: Path) -> Path:
    spec = {
        "name": name,
        "model": "minilm",
        "corpus": "builtin",
        "out": str(out),
        "extract": EXTRACT,
        "sampling": {"docs_per_shard": DOCS_PER_SHARD},
        "projection": {"methods": ["pca"], "dims": [2], "layers": "5", "heads": "0-1"},
        "metrics": True,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> qkscale.Store:
    out = tmp_path_factory.mktemp("reference") / "store"
    store = qkscale.extract("minilm", "builtin", out, docs_per_shard=DOCS_PER_SHARD, progress=False, **EXTRACT)
    project(store, method="pca", layers=[5], heads=[0, 1], progress=False)
    return store


def _wait_for(condition, timeout: float = 180, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def _committed(out: Path) -> int:
    return len(list((out / layout.SHARDS).glob("[0-9]*/shard.json"))) if (out / layout.SHARDS).is_dir() else 0


def _assert_same(store: qkscale.Store, reference: qkscale.Store) -> None:
    """Every token once, in order; the same vectors and projections, up to float16 rounding.

    Dask's workers run torch on one thread (this process on two), which sums in another order.
    """
    assert not store.tokens.duplicated(["doc", "position"]).any()
    pd.testing.assert_frame_equal(store.tokens, reference.tokens)
    close = {"rtol": 1e-2, "atol": 4e-3}
    for layer in reference.layers:
        for head in reference.heads:
            np.testing.assert_allclose(store.queries(layer, head), reference.queries(layer, head), **close)
            np.testing.assert_allclose(store.keys(layer, head), reference.keys(layer, head), **close)
    for head in (0, 1):
        ours, theirs = store.projection(5, head, "pca"), reference.projection(5, head, "pca")
        assert ours[["token", "kind"]].equals(theirs[["token", "kind"]])
        np.testing.assert_allclose(ours[["x", "y"]], theirs[["x", "y"]], rtol=1e-2, atol=1e-2)


def _status(run_cli, out: Path) -> dict:
    code, stdout, stderr = run_cli("status", out, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def test_killed_coordinator_is_rerun_by_the_scheduler(tmp_path, reference, run_cli):
    """The worker running a submitted job's coordinator dies: Dask reruns the coordinator, which resumes."""
    address, processes = start_dask(tmp_path / "dask")
    try:
        out = tmp_path / "s"
        _wait_for(lambda: run_cli("submit", _spec_file(tmp_path, "killed", out), "--scheduler", address)[0] == 0)
        _wait_for(lambda: _committed(out) >= 2)
        coordinator = read_lock(out)
        assert coordinator["command"] == "qkscale submit" and coordinator["job"] == read_job(out)["job_id"]
        os.kill(coordinator["pid"], signal.SIGKILL)
        _wait_for(lambda: _status(run_cli, out)["state"] == "done", timeout=300, interval=0.5)
        job = read_job(out)
        assert job["runs"] == 2, "the scheduler reran the coordinator once"
        assert read_lock(out) is None
        _assert_same(qkscale.open_store(out), reference)
    finally:
        stop_dask(processes)


def test_stalled_job_is_reported_and_resumed_by_submit(tmp_path, reference, run_cli):
    """The whole cluster dies: `status` says stalled; submitting the spec to a new cluster resumes it."""
    out = tmp_path / "s"
    spec = _spec_file(tmp_path, "stalled", out)
    address, processes = start_dask(tmp_path / "dask")
    try:
        _wait_for(lambda: run_cli("submit", spec, "--scheduler", address)[0] == 0)
        _wait_for(lambda: _committed(out) >= 2)
    finally:
        kill_dask(processes)
    _wait_for(lambda: _status(run_cli, out)["state"] == "stalled", timeout=30)
    code, stdout, _ = run_cli("status", out)
    assert code == 0 and "stalled" in stdout and "submit (or run) the same spec again" in stdout
    assert 2 <= _status(run_cli, out)["shards_done"] < 12

    address, processes = start_dask(tmp_path / "dask2")
    try:
        _wait_for(lambda: run_cli("submit", spec, "--scheduler", address)[0] == 0, timeout=120, interval=1)
        _wait_for(lambda: _status(run_cli, out)["state"] == "done", timeout=300, interval=0.5)
    finally:
        stop_dask(processes)
    _assert_same(qkscale.open_store(out), reference)
    assert job_status(out)["shards_done"] == 12


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
    return os.geteuid() == 0 and subprocess.run(command, capture_output=True).returncode == 0


def test_disk_full_mid_shard_gives_one_line_and_resumes_identically(tmp_path, reference):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 2):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    try:
        out = disk / "store"
        args = ["--docs-per-shard", str(DOCS_PER_SHARD), "--limit-docs", "48", "--batch-size", "4"]
        args += ["--max-length", "32", "--layers", "0,5", "--out", str(out)]
        command = [sys.executable, "-m", "qkscale.cli", "extract", *args]
        full = subprocess.run(command, capture_output=True, text=True, timeout=300)
        errors = [line for line in full.stderr.splitlines() if line.startswith("qkscale: error:")]
        assert full.returncode != 0 and len(errors) == 1, full.stderr
        assert "No space left on device" in errors[0] and "Traceback" not in full.stderr
        partial = qkscale.open_store(out)
        assert 0 < len(partial.committed_shards()) < 12 and not partial.manifest["complete"]
        assert not list(out.rglob(".tmp-*")), "no half-written temp is left"

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space is back
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        store = qkscale.open_store(out)
        assert store.complete
        pd.testing.assert_frame_equal(store.tokens, reference.tokens)
        for layer in reference.layers:
            np.testing.assert_array_equal(store.queries(layer, 3), reference.queries(layer, 3))
            np.testing.assert_array_equal(store.keys(layer, 11), reference.keys(layer, 11))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_project_killed_mid_head_leaves_no_partial_projection(tmp_path, reference, run_cli):
    uninterrupted = qkscale.open_store(shutil.copytree(reference.path, tmp_path / "uninterrupted"))
    killed = shutil.copytree(reference.path, tmp_path / "killed")
    args = ["--method", "umap", "--layers", "0", "--heads", "0-3", "--sample", "300"]
    project(uninterrupted, method="umap", layers=[0], heads=[0, 1, 2, 3], sample=300, progress=False)

    command = [sys.executable, "-m", "qkscale.cli", "project", str(killed), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folders = [killed / part / "umap-2d" for part in ("projections", "maps", "thumbnails")]

    def writing() -> bool:  # a head's file or views are being written: the kill lands mid-head
        return process.poll() is not None or any(f.is_dir() and any(f.glob(".tmp-*")) for f in folders[1:])

    _wait_for(writing, timeout=300, interval=0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (killed / LOCK).exists(), "a killed writer leaves its lock"
    done = sorted(p.name for p in (killed / "projections" / "umap-2d").glob("L*.parquet"))
    assert len(done) < 4, "the kill landed before the last head"
    code, stdout, _ = run_cli("verify", killed)  # every committed projection is whole, with its views
    assert code == 0, stdout

    code, _, stderr = run_cli("project", killed, *args)
    assert code == 0 and "taking over the lock" in stderr
    assert not list(killed.rglob(".tmp-*"))
    again = qkscale.open_store(killed)
    for head in range(4):
        path = projection_path(killed, "umap", 2, 0, head)
        assert path.is_file()
        pd.testing.assert_frame_equal(again.projection(0, head, "umap"), uninterrupted.projection(0, head, "umap"))
