"""`--heads`: a store of chosen heads only, through extract, metrics, project and the dashboard."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MAX_LENGTH

from qkscale import open_store
from qkscale.errors import StoreError


@pytest.fixture(scope="module")
def chosen_store(tmp_path_factory, sentences_file, tiny_models):
    """The tiny Llama (4 query heads, 2 key/value heads) with query heads 1 and 3 only."""
    from qkscale.cli import main

    out = tmp_path_factory.mktemp("heads") / "store"
    args = ["extract", "--model", tiny_models["llama"], "--corpus", sentences_file, "--out", out, "--heads", "1,3"]
    args += ["--max-length", MAX_LENGTH, "--batch-size", 4, "--docs-per-shard", 4]
    import sys

    old, sys.argv = sys.argv, ["qkscale", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    finally:
        sys.argv = old
    return open_store(out)


def test_only_the_chosen_heads_are_stored_and_equal_a_full_store(chosen_store, sentence_stores):
    full = sentence_stores["llama"]
    assert chosen_store.heads == [1, 3] and chosen_store.manifest["heads"] == [1, 3]
    for layer in full.layers:
        for head in (1, 3):
            np.testing.assert_array_equal(chosen_store.queries(layer, head), full.queries(layer, head))
            np.testing.assert_array_equal(chosen_store.keys(layer, head), full.keys(layer, head))
    assert chosen_store.bytes_on_disk() < full.bytes_on_disk()
    with pytest.raises(StoreError, match=r"^head 2 is not stored \(stored heads: 1,3\)$"):
        chosen_store.queries(0, 2)


def test_resuming_with_other_heads_is_refused(chosen_store, run_cli, sentences_file, tiny_models):
    code, _, err = run_cli(
        "extract", "--model", tiny_models["llama"], "--corpus", sentences_file, "--out", chosen_store.path,
        "--heads", "0-1", "--max-length", MAX_LENGTH, "--batch-size", 4, "--docs-per-shard", 4,
    )  # fmt: skip
    assert code != 0 and "made with another heads ([1, 3] there, [0, 1] now)" in err and "Traceback" not in err


def test_metrics_project_and_dashboard_see_the_stored_heads(chosen_store, run_cli, tmp_path):
    import shutil

    shutil.copytree(chosen_store.path, tmp_path / "store")
    store = open_store(tmp_path / "store")
    code, out, err = run_cli("metrics", store.path)
    assert code == 0, err
    assert sorted(set(store.metrics["head"])) == [1, 3] and len(store.metrics) == 2 * len(store.layers)
    code, out, err = run_cli("project", store.path, "--method", "pca")
    assert code == 0, err
    assert f"projected {2 * len(store.layers)} heads" in out
    code, _, err = run_cli("project", store.path, "--method", "pca", "--heads", "0")
    assert code != 0 and err.strip().endswith("head 0 is not in the store (stored heads: 1,3)")
    pytest.importorskip("panel")
    from qkscale.dashboard.data import DashboardData

    data = DashboardData(store)
    assert data.heads == [(layer, head) for layer in store.layers for head in (1, 3)]
    assert data.head_points(store.layers[0], 3, "pca", 2).n_points == 2 * store.n_tokens
