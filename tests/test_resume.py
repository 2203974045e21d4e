"""An interrupted extract (the process killed mid-way) is reported incomplete and resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import qkscale
from qkscale.corpus.builtin import builtin_sentences
from qkscale.store import layout

N_DOCS, PER_SHARD = 48, 6
ARGS = ["--docs-per-shard", str(PER_SHARD), "--batch-size", "3", "--max-length", "24", "--layers", "0,4-5"]


def _extract(out: Path, corpus: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "qkscale.cli", "extract", "--corpus", str(corpus), "--out", str(out), *ARGS]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_same_store(a: qkscale.Store, b: qkscale.Store) -> None:
    pd.testing.assert_frame_equal(a.tokens, b.tokens)
    pd.testing.assert_frame_equal(a.documents, b.documents)
    for layer in a.layers:
        for head in range(a.n_heads):
            np.testing.assert_array_equal(a.queries(layer, head), b.queries(layer, head))
            np.testing.assert_array_equal(a.keys(layer, head), b.keys(layer, head))


def test_killed_extract_resumes_to_identical_store(tmp_path, run_cli):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(builtin_sentences()[:N_DOCS]) + "\n", encoding="utf-8")
    reference = qkscale.extract(
        corpus=corpus,
        out=tmp_path / "reference",
        progress=False,
        docs_per_shard=PER_SHARD,
        batch_size=3,
        max_length=24,
        layers="0,4-5",
    )

    out = tmp_path / "interrupted"
    process = _extract(out, corpus)
    second_shard = layout.shard_dir(out, 1)
    deadline = time.monotonic() + 120
    while not second_shard.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    interrupted = qkscale.open_store(out)
    done = interrupted.committed_shards()
    assert 2 <= len(done) < N_DOCS // PER_SHARD, "the kill should land mid-extraction"
    assert not interrupted.complete and not interrupted.manifest["complete"]

    code, stdout, _ = run_cli("inspect", out)
    assert code == 0 and "INCOMPLETE" in stdout and f"{len(done)}/{N_DOCS // PER_SHARD} shards" in stdout

    resumed = _extract(out, corpus)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "warning: taking over the lock" in stderr, "the killed writer's lock is taken over"
    store = qkscale.open_store(out)
    assert store.complete and store.manifest["complete"]
    assert not list((out / layout.SHARDS).glob(".tmp-*")), "temp folders of the killed run are cleaned up"
    _assert_same_store(store, reference)
    assert not store.tokens.duplicated(["doc", "position"]).any()
