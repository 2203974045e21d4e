"""Head metrics: hand-computed tiny heads, agreement with the store's attention, storage and CLI."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from qkscale.metrics import OFFSET_BINS, HeadSums, compute_metrics, head_similarity, jensen_shannon_distances

T = 4
SPECIAL = np.array([True, False, False, True])


def _one_head(q: np.ndarray, k: np.ndarray, causal: bool) -> dict:
    sums = HeadSums.create(1, 1, q.shape[1])
    sums.append(0, q[None], k[None], SPECIAL, scale=1.0, causal=causal)
    return sums.finalize([0]).iloc[0].to_dict()


def test_uniform_attention_by_hand():
    zeros = np.zeros((T, 2), np.float32)  # every score is 0: each query spreads evenly over 4 keys
    row = _one_head(zeros, zeros, causal=False)
    assert row["entropy"] == pytest.approx(math.log(4))
    assert row["attended_distance"] == pytest.approx((1.5 + 1 + 1 + 1.5) / 4)
    assert row["special_mass"] == pytest.approx(0.5)
    assert row["first_mass"] == pytest.approx(0.25)
    assert row["previous_mass"] == pytest.approx(3 * 0.25 / 4)  # query 0 has no previous token
    assert row["same_mass"] == pytest.approx(0.25)
    assert row["next_mass"] == pytest.approx(3 * 0.25 / 4)
    assert row["n_queries"] == T


def test_causal_uniform_attention_by_hand():
    zeros = np.zeros((T, 2), np.float32)  # query i spreads evenly over keys 0..i
    row = _one_head(zeros, zeros, causal=True)
    assert row["entropy"] == pytest.approx((0 + math.log(2) + math.log(3) + math.log(4)) / 4)
    assert row["attended_distance"] == pytest.approx((0 + 0.5 + 1 + 1.5) / 4)
    assert row["first_mass"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert row["special_mass"] == pytest.approx((1 + 1 / 2 + 1 / 3 + (1 / 4 + 1 / 4)) / 4)
    assert row["same_mass"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert row["next_mass"] == 0.0


def test_previous_token_head_by_hand():
    keys = np.eye(T, dtype=np.float32)  # key j is e_j
    queries = 60.0 * np.eye(T, dtype=np.float32)[[0, 0, 1, 2]]  # query i points at key i-1 (query 0 at itself)
    row = _one_head(queries, keys, causal=False)
    assert row["previous_mass"] == pytest.approx(3 / 4)
    assert row["same_mass"] == pytest.approx(1 / 4)
    assert row["next_mass"] == pytest.approx(0.0, abs=1e-12)
    assert row["entropy"] == pytest.approx(0.0, abs=1e-20)
    assert row["attended_distance"] == pytest.approx(3 / 4)
    assert row["first_mass"] == pytest.approx(2 / 4)
    assert row["special_mass"] == pytest.approx(2 / 4)  # queries 0 and 1 attend to token 0
    mean_q, mean_k = np.array([30.0, 15.0, 15.0, 0.0]), np.full(T, 0.25)
    assert row["centroid_distance"] == pytest.approx(np.linalg.norm(mean_q - mean_k), rel=1e-6)
    assert row["q_norm"] == pytest.approx(60.0)
    assert row["k_norm"] == pytest.approx(1.0)
    sums = HeadSums.create(1, 1, T)
    sums.append(0, queries[None], keys[None], SPECIAL, scale=1.0, causal=False)
    profile = dict(zip(OFFSET_BINS, sums.offset_profiles()[0], strict=True))
    assert profile["-1"] == pytest.approx(3 / 4) and profile["0"] == pytest.approx(1 / 4)
    assert sum(profile.values()) == pytest.approx(1.0)


def test_offset_profile_and_combine():
    rng = np.random.default_rng(3)
    docs = [(rng.normal(size=(2, n, 3)), rng.normal(size=(2, n, 3))) for n in (3, 12, 5)]
    whole = HeadSums.create(1, 2, 3)
    parts = [HeadSums.create(1, 2, 3) for _ in docs]
    for part, (q, k) in zip(parts, docs, strict=True):
        for sums in (whole, part):
            sums.append(0, q, k, np.zeros(q.shape[1], bool), scale=0.5, causal=False)
    combined = parts[0].combine(parts[1]).combine(parts[2])
    np.testing.assert_allclose(combined.finalize([0]).to_numpy(float), whole.finalize([0]).to_numpy(float))
    profiles = whole.offset_profiles()
    assert profiles.shape == (2, len(OFFSET_BINS))
    np.testing.assert_allclose(profiles.sum(axis=1), 1.0)
    assert profiles[:, 0].sum() > 0  # offsets below -8 exist in the 12-token document


@pytest.mark.parametrize("causal", [False, True])
def test_documents_of_one_length_in_a_batch_equal_one_at_a_time(causal):
    rng = np.random.default_rng(5)
    q, k = rng.normal(size=(2, 3, 4, 10, 6))  # 3 heads, 4 documents of 10 tokens
    special = rng.random((4, 10)) < 0.2
    batched, single = HeadSums.create(1, 3, 6), HeadSums.create(1, 3, 6)
    batched.append(0, q, k, special, scale=0.4, causal=causal, window=3 if causal else None)
    for doc in range(4):
        single.append(0, q[:, doc], k[:, doc], special[doc], scale=0.4, causal=causal, window=3 if causal else None)
    for field in ("n_queries", "query_sums", "offsets", "q_sum", "k_sum", "q_norm_sum", "k_norm_sum"):
        np.testing.assert_allclose(getattr(batched, field), getattr(single, field), rtol=1e-6, atol=1e-9)


def test_far_offsets_fall_in_the_outer_bins():
    t = 12
    keys = np.eye(t, dtype=np.float32)
    queries = 60.0 * np.eye(t, dtype=np.float32)[[11] * 6 + [0] * 6]  # queries 0-5 look at 11, 6-11 at 0
    sums = HeadSums.create(1, 1, t)
    sums.append(0, queries[None], keys[None], np.zeros(t, bool), scale=1.0, causal=False)
    profile = dict(zip(OFFSET_BINS, sums.offset_profiles()[0], strict=True))
    # Offsets 11-i for i=0..5 are 11..6: 11, 10, 9 land right of +8; 8, 7, 6 in their own bins.
    assert profile[">8"] == pytest.approx(3 / 12) and profile["8"] == pytest.approx(1 / 12)
    assert profile["<-8"] == pytest.approx(3 / 12) and profile["-6"] == pytest.approx(1 / 12)


def test_jensen_shannon_matches_scipy():
    from scipy.spatial.distance import jensenshannon

    profiles = np.random.default_rng(0).dirichlet(np.ones(len(OFFSET_BINS)), size=6)
    profiles[0, :3] = 0
    profiles[0] /= profiles[0].sum()
    expected = [[jensenshannon(u, v, base=2) for v in profiles] for u in profiles]
    np.testing.assert_allclose(jensen_shannon_distances(profiles), expected, atol=1e-7)


def test_similarity_is_symmetric_and_orders_alike_heads_together():
    a = np.array([0.9, 0.05, 0.05, 0.0])
    b = np.array([0.0, 0.05, 0.05, 0.9])
    profiles = np.stack([a, b, a * 0.98 + b * 0.02, b * 0.97 + a * 0.03])
    similarity, order = head_similarity(profiles)
    np.testing.assert_allclose(similarity, similarity.T)
    np.testing.assert_allclose(np.diag(similarity), 1.0)
    assert sorted(order) == [0, 1, 2, 3]
    position = {head: i for i, head in enumerate(order)}
    assert abs(position[0] - position[2]) == 1 and abs(position[1] - position[3]) == 1


@pytest.mark.parametrize("store_name", ["minilm", "gpt2"])
def test_store_metrics_match_the_stores_attention(store_name, sentence_stores, tmp_path):
    source = sentence_stores[store_name]
    store_path = tmp_path / "store"
    shutil.copytree(source.path, store_path)
    table = compute_metrics(store_path, progress=False)
    assert len(table) == len(source.layers) * source.n_heads
    assert sorted(table["order"]) == list(range(len(table)))
    layer, head = source.layers[-1], source.n_heads - 1
    entropies, previous = [], []
    for doc in source.documents["doc"]:
        a = source.attention(doc, layer, head).astype(np.float64)
        entropies.extend(-(a * np.log(np.where(a > 0, a, 1))).sum(axis=1))
        previous.extend([0.0, *np.diagonal(a, offset=-1)])
    row = table[(table["layer"] == layer) & (table["head"] == head)].iloc[0]
    assert row["entropy"] == pytest.approx(np.mean(entropies), rel=1e-5)
    assert row["previous_mass"] == pytest.approx(np.mean(previous), rel=1e-5)
    assert row["n_queries"] == source.n_tokens
    if source.causal:
        assert (table["next_mass"] == 0).all()
    q = source.queries(layer, head).astype(np.float32)
    assert row["q_norm"] == pytest.approx(np.linalg.norm(q, axis=1).mean(), rel=1e-5)


def test_metrics_cli_writes_and_store_reads(builtin_store, tmp_path, run_cli):
    store_path = tmp_path / "store"
    shutil.copytree(builtin_store.path, store_path)
    from qkscale import open_store

    store = open_store(store_path)
    assert not store.has_metrics
    code, out, err = run_cli("metrics", store_path)
    assert code == 0, err
    assert "previous-token heads" in out and "L" in out
    assert store.has_metrics
    assert store.metrics.shape[0] == 72
    assert store.head_similarity.shape == (72, 72)
    assert list(store.offset_profiles.columns) == OFFSET_BINS
    stamp = (store_path / "metrics" / "heads.parquet").stat().st_mtime_ns
    assert run_cli("metrics", store_path)[0] == 0  # already there: not recomputed
    assert (store_path / "metrics" / "heads.parquet").stat().st_mtime_ns == stamp
    assert run_cli("metrics", store_path, "--force")[0] == 0
    assert (store_path / "metrics" / "heads.parquet").stat().st_mtime_ns != stamp
    assert not [p for p in store_path.rglob(".tmp-*")]
    code, out, _ = run_cli("inspect", store_path)
    assert "metrics    computed" in out


def test_failed_recompute_keeps_the_old_metrics(builtin_store, tmp_path, monkeypatch):
    from qkscale import open_store
    from qkscale.store import metrics_files

    store_path = tmp_path / "store"
    shutil.copytree(builtin_store.path, store_path)
    before = compute_metrics(store_path, progress=False)

    def fail(temp, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics_files, "commit_dir", fail)
    with pytest.raises(OSError):
        compute_metrics(store_path, progress=False, force=True)
    assert open_store(store_path).metrics.equals(before)
    assert not list(store_path.rglob(".tmp-*"))
