"""Projection: every installed backend, sampling + placement against a full fit, reruns, CLI and errors."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pandas as pd
import pytest

from qkscale.project import BACKENDS, ProjectionSettings, get_backend, plan_projection, project
from qkscale.project import placement as placement_module
from qkscale.project.placement import NeighborSearch, place_by_neighbors
from qkscale.project.run import embed_points, joint_points
from qkscale.project.sampling import fit_points, stratified_rows, trustworthiness

# Trustworthiness every backend must reach on a real MiniLM head (600 points, k=15).
TRUST_FLOOR = {"umap": 0.85, "tsne": 0.85, "pca": 0.7}


def _installed_backend(name: str):
    backend = BACKENDS[name]()
    for module, _package in set(backend.libraries.values()):
        pytest.importorskip(module.split(".")[0])
    if name == "cuml":
        from qkscale.project.registry import _cupy_sees_gpu

        if not _cupy_sees_gpu():
            pytest.skip("cuML needs a GPU")
    return backend


@pytest.fixture(scope="module")
def head_points(builtin_store) -> tuple[np.ndarray, np.ndarray]:
    """A real head's joint points (cosine geometry) and the documents of its tokens."""
    points, _ = joint_points(builtin_store.queries(2, 3), builtin_store.keys(2, 3), ProjectionSettings())
    return points, builtin_store.tokens["doc"].to_numpy()


@pytest.fixture(scope="module")
def small_points(head_points) -> np.ndarray:
    points, docs = head_points
    return points[fit_points(docs, 600, np.random.default_rng(0))]


CASES = [(method, dims) for method in ("umap", "tsne", "pca") for dims in (2, 3)]


@pytest.mark.parametrize("backend_name", list(BACKENDS))
@pytest.mark.parametrize(("method", "dims"), CASES)
def test_backend_parity(backend_name, method, dims, small_points):
    backend = _installed_backend(backend_name)
    if (method, dims) in backend.unsupported:
        with pytest.raises(Exception, match="cannot compute"):
            backend.check(method, dims)
        return
    backend.check(method, dims)
    embedding = backend.embed(small_points, method, dims, seed=0)
    assert embedding.shape == (len(small_points), dims) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    assert trustworthiness(small_points, embedding) > TRUST_FLOOR[method]


@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
def test_cpu_backend_is_reproducible(method, small_points):
    backend = _installed_backend("cpu")
    first = backend.embed(small_points, method, 2, seed=3)
    np.testing.assert_array_equal(first, backend.embed(small_points, method, 2, seed=3))


def test_cuml_refuses_3d_tsne_without_importing_cuml():
    with pytest.raises(Exception, match="2D embeddings only"):
        BACKENDS["cuml"]().check("tsne", 3)


def test_auto_backend_is_cpu_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert get_backend("auto").name == "cpu"


def test_stratified_sample_spreads_over_documents():
    docs = np.repeat(np.arange(50), np.arange(1, 51))[::-1].copy()  # 50 documents of 1..50 tokens
    rows = stratified_rows(docs, 255, np.random.default_rng(0))
    assert len(np.unique(rows)) == 255
    per_doc = np.bincount(docs[rows], minlength=50)
    expected = np.bincount(docs) * 255 / len(docs)
    assert np.all(np.abs(per_doc - expected) < 2)  # whole strata inside a document, plus its two ends
    equal = np.repeat(np.arange(100), 8)  # 100 documents of 8 tokens; one pick per 4 rows
    positions = stratified_rows(equal, 200, np.random.default_rng(0)) % 8
    assert set(positions) == set(range(8))  # every position, the first (sink) token included
    fitted = fit_points(docs, 300, np.random.default_rng(0))
    assert (fitted < len(docs)).sum() == 150 and (fitted >= len(docs)).sum() == 150  # half queries, half keys


@pytest.mark.parametrize("method", ["umap", "pca"])
def test_sample_and_place_matches_a_full_fit(method, head_points):
    points, docs = head_points
    backend = get_backend("cpu")
    full, full_details = embed_points(points, docs, ProjectionSettings(method=method, sample=len(points)), backend)
    sampled, details = embed_points(points, docs, ProjectionSettings(method=method, sample=1500), backend)
    assert full_details["placement"] == "none (full fit)" and details["n_fitted"] == 1500
    assert abs(trustworthiness(points, sampled) - trustworthiness(points, full)) < 0.03


def test_approximate_search_agrees_with_exact(head_points, monkeypatch):
    pytest.importorskip("pynndescent")
    points, _ = head_points
    sample, queries = points[:2000], points[2000:]
    exact = NeighborSearch(sample, len(queries))
    monkeypatch.setattr(placement_module, "EXACT_SEARCH_LIMIT", 0)
    approximate = NeighborSearch(sample, len(queries))
    assert exact.exact and not approximate.exact
    exact_indices, _ = exact.query(queries, 10)
    approximate_indices, _ = approximate.query(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_indices, approximate_indices, strict=True)])
    assert recall > 0.9
    embedding = np.random.default_rng(0).normal(size=(len(sample), 2)).astype(np.float32)
    placed = place_by_neighbors(exact, embedding, queries[:50])
    distances = np.linalg.norm(queries[:50, None, :] - sample[None, :, :], axis=2)
    order = np.argsort(distances, axis=1)
    nearest = order[:, :10]
    weights = 1 / np.take_along_axis(distances, nearest, axis=1)
    expected = (weights[:, :, None] * embedding[nearest]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
    ranked = np.take_along_axis(distances, order, axis=1)
    clear = (ranked[:, 10] - ranked[:, 9] > 1e-4) & (ranked[:, 0] > 1e-3)  # no ties at the 10th neighbour
    assert clear.sum() > 30
    np.testing.assert_allclose(placed[clear], expected[clear], rtol=1e-3, atol=1e-4)


def test_placement_in_forked_processes_equals_one_process(head_points, monkeypatch):
    pytest.importorskip("pynndescent")
    if not placement_module._can_fork():
        pytest.skip("one core here: placement runs in this process")
    points, _ = head_points
    sample, queries = points[:2000], points[2000:]
    monkeypatch.setattr(placement_module, "EXACT_SEARCH_LIMIT", 0)
    search = NeighborSearch(sample, len(queries))
    embedding = np.random.default_rng(0).normal(size=(len(sample), 2)).astype(np.float32)
    place = lambda chunk: place_by_neighbors(search, embedding, chunk)  # noqa: E731
    items = [(i, queries[i * 700 : (i + 1) * 700] if i != 2 else None) for i in range(len(queries) // 700)]
    results = {}
    for parallel in (False, True):
        with placement_module.placement_map(place, parallel) as placed:
            results[parallel] = list(placed(items))
    assert [meta for meta, _ in results[True]] == [meta for meta, _ in items]  # in order
    for (_, one), (_, forked) in zip(results[False], results[True], strict=True):
        assert (one is None and forked is None) or np.array_equal(one, forked)


def test_placement_in_chunks_equals_one_pass(head_points, monkeypatch):
    from qkscale.project import run as run_module

    points, docs = head_points
    settings = ProjectionSettings(method="umap", sample=600)
    backend = get_backend("cpu")
    whole, _ = embed_points(points, docs, settings, backend)
    monkeypatch.setattr(run_module, "CHUNK_POINTS", 1000)
    monkeypatch.setattr(placement_module, "_EXACT_BLOCK", 600 * 70)  # 70 queries per distance block
    stages = []
    chunked, details = embed_points(points, docs, settings, backend, report=stages.append)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    assert details["n_fitted"] == 600 and stages[0] == "fitting 600 points"
    assert sum(s.startswith("placing") for s in stages) == len(run_module._halves_in_chunks(len(points), 1000))


@pytest.fixture
def store_copy(builtin_store, tmp_path):
    shutil.copytree(builtin_store.path, tmp_path / "store")
    from qkscale import open_store

    return open_store(tmp_path / "store")


def test_projection_files_and_rerun(store_copy, run_cli):
    code, out, err = run_cli("project", store_copy.path, "--method", "pca", "--layers", "1", "--heads", "0-2")
    assert code == 0, err
    assert "projected 3 heads" in out
    frame = store_copy.projection(1, 2, "pca", 2)
    n = store_copy.n_tokens
    assert list(frame.columns) == ["token", "kind", "x", "y"] and len(frame) == 2 * n
    assert (frame["kind"] == "q").sum() == n and set(frame.loc[frame["kind"] == "k", "token"]) == set(range(n))
    record = store_copy.projection_record(1, 2, "pca", 2)
    assert record["backend"] == "cpu" and record["library"].startswith("scikit-learn")
    assert 0.5 < record["trustworthiness"] <= 1.0 and record["settings"]["metric"] == "cosine"
    from qkscale.maps.order import OrderedPoints

    ordered = OrderedPoints(store_copy.path / "maps" / "pca-2d" / "L001-H002")  # written with the projection
    placed = frame.assign(kind=(frame["kind"] == "k").astype(np.uint8)).sort_values(["kind", "token"])
    mapped = pd.DataFrame({c: np.asarray(ordered.columns[c]) for c in placed.columns}).sort_values(["kind", "token"])
    np.testing.assert_array_equal(mapped.to_numpy(float), placed.to_numpy(float))
    assert not list((store_copy.path / "maps" / "pca-2d").glob(".tmp-*"))
    stamp = store_copy.path / "projections" / "pca-2d" / "L001-H002.parquet"
    before = stamp.stat().st_mtime_ns

    code, out, err = run_cli("project", store_copy.path, "--method", "pca", "--layers", "1", "--heads", "0-3")
    assert code == 0, err
    assert "3 of 4 heads already projected" in out and "projected 1 heads" in out
    assert stamp.stat().st_mtime_ns == before

    import shutil

    from qkscale.maps.thumbnail import thumbnail_path

    shutil.rmtree(store_copy.path / "maps" / "pca-2d" / "L001-H002")  # a store projected before maps existed
    thumbnail_path(store_copy.path, "pca", 2, 1, 2).unlink()
    code, out, err = run_cli("project", store_copy.path, "--method", "pca", "--layers", "1", "--heads", "2")
    assert code == 0, err
    assert stamp.stat().st_mtime_ns == before  # the views are written, the head is not projected again
    assert (store_copy.path / "maps" / "pca-2d" / "L001-H002" / "grid.json").is_file()
    assert thumbnail_path(store_copy.path, "pca", 2, 1, 2).stat().st_size > 500

    code, _, err = run_cli(
        "project", store_copy.path, "--method", "pca", "--layers", "1", "--heads", "2", "--seed", "5"
    )
    assert code == 2 and "seed=0 (now 5)" in err and "--force" in err
    code, _, err = run_cli("project", store_copy.path, "--method", "pca", "--layers", "1", "--heads", "2", "--force")
    assert code == 0, err
    assert stamp.stat().st_mtime_ns != before

    code, _, err = run_cli(
        "project", store_copy.path, "--method", "umap", "--dims", "3", "--layers", "0", "--heads", "1"
    )
    assert code == 0, err
    assert list(store_copy.projection(0, 1, "umap", 3).columns) == ["token", "kind", "x", "y", "z"]
    assert store_copy.projections() == {"pca-2d": [(1, h) for h in range(4)], "umap-3d": [(0, 1)]}
    code, out, _ = run_cli("inspect", store_copy.path)
    assert "pca-2d: 4 heads (L1 H0-3)" in out and "umap-3d: 1 heads (L0 H1)" in out
    assert not list(store_copy.path.rglob(".tmp-*"))


def test_projection_is_reproducible_end_to_end(store_copy):
    """Same settings, same coordinates: sampling, fit and placement are all seeded."""
    project(store_copy, method="umap", layers=[1], heads=[4], sample=600, progress=False)
    first = store_copy.projection(1, 4)
    project(store_copy, method="umap", layers=[1], heads=[4], sample=600, progress=False, force=True)
    assert store_copy.projection(1, 4).equals(first)
    assert store_copy.projection_record(1, 4)["n_fitted"] == 600


def test_python_api_projects_and_reads(store_copy):
    project(store_copy, method="tsne", layers=[2], heads=[0], sample=800, progress=False)
    record = store_copy.projection_record(2, 0, "tsne", 2)
    assert record["n_fitted"] == 800 and "interpolation" in record["placement"]
    with pytest.raises(Exception, match="no umap 2D projection"):
        store_copy.projection(2, 0)


ERRORS = [
    (["--method", "mds"], "unknown method 'mds'"),
    (["--backend", "gpu"], "unknown backend 'gpu'"),
    (["--dims", "4"], "--dims must be 2 or 3"),
    (["--metric", "manhattan"], "unknown metric 'manhattan'"),
    (["--sample", "20"], "--sample 20 is too small: umap needs at least 60 points"),
    (["--method", "tsne", "--dims", "3", "--backend", "cuml"], "cuML's TSNE computes 2D embeddings only"),
    (["--layers", "9"], "--layers 9 is out of range: the model has layers 0-5"),
    (["--heads", "12"], "--heads 12 is out of range: the model has heads 0-11"),
    (["--heads", "x"], "--heads 'x' is not a list like 0,2-4"),
    (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1, not -1"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
def test_bad_options_fail_cleanly(args, message, store_copy, run_cli):
    code, out, err = run_cli("project", store_copy.path, *args)
    assert code == 2
    assert err.startswith("qkscale: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (store_copy.path / "projections").exists()


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed here")
def test_missing_library_is_named(store_copy, run_cli):
    code, _, err = run_cli("project", store_copy.path, "--backend", "cuml")
    assert code == 2 and "cuml-cu12" in err


def test_incomplete_or_foreign_store_is_refused(store_copy, tmp_path, run_cli):
    shutil.rmtree(store_copy.path / "shards" / "00001")
    for verb in ("project", "metrics"):
        code, _, err = run_cli(verb, store_copy.path)
        assert code == 2 and "incomplete" in err
    code, _, err = run_cli("project", tmp_path)
    assert code == 2 and "not a qkscale store" in err
    assert not (store_copy.path / "projections").exists() and not (store_copy.path / "metrics").exists()


def test_plan_is_checked_before_any_work(store_copy):
    plan = plan_projection(store_copy, method="pca", layers="0-1", heads="0,5")
    assert plan.heads == [(0, 0), (0, 5), (1, 0), (1, 5)]
    assert plan.units() == [("pca", 2, *head) for head in plan.heads]
