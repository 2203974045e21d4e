"""Joint normalisation: both conditions hold, each part can be switched off, attention is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from qkscale.attention import attention_weights
from qkscale.joint import normalize, normalize_with_info


def _mean_norm(x) -> float:
    return float((x * x).sum(axis=1).__pow__(0.5).mean())


def _random_head(xp, n: int = 3000, d: int = 16):
    rng = np.random.default_rng(7)
    q = rng.normal(2.0, 1.0, (n, d)) * rng.uniform(0.5, 3.0, (n, 1))
    k = rng.normal(-1.0, 4.0, (n, d))
    return xp.asarray(q.astype(np.float16)), xp.asarray(k.astype(np.float16))


def _check_conditions(q2, k2, translate: bool, scale: bool) -> None:
    centroid_gap = float(abs(q2.mean(axis=0) - k2.mean(axis=0)).max())
    if translate:
        assert centroid_gap < 1e-4 * _mean_norm(q2)
    if scale:
        assert _mean_norm(q2) == pytest.approx(_mean_norm(k2), rel=1e-5)


@pytest.mark.parametrize("translate", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_conditions_hold_and_parts_switch_off(translate, scale):
    q, k = _random_head(np)
    q2, k2, info = normalize_with_info(q, k, translate=translate, scale=scale)
    assert q2.dtype == k2.dtype == np.float32
    _check_conditions(q2, k2, translate, scale)
    if not scale:
        assert info.scale == 1.0
        np.testing.assert_array_equal(q2, q.astype(np.float32))
    if not translate:
        np.testing.assert_allclose(k2, k.astype(np.float64) / info.scale, rtol=1e-6)
        # Without the translation the centroids stay apart (these keys are centred elsewhere).
        assert float(abs(q2.mean(axis=0) - k2.mean(axis=0)).max()) > 0.1


def test_conditions_hold_on_every_stored_head(builtin_store):
    for layer in builtin_store.layers:
        for head in range(builtin_store.n_heads):
            q2, k2 = normalize(builtin_store.queries(layer, head), builtin_store.keys(layer, head))
            _check_conditions(q2, k2, translate=True, scale=True)


def test_degenerate_keys_keep_scale_one():
    q, _ = _random_head(np)
    k = np.ones_like(q)
    _, k2, info = normalize_with_info(q, k)
    assert info.scale == 1.0
    np.testing.assert_allclose(k2.mean(axis=0, dtype=np.float64), q.astype(np.float64).mean(axis=0), rtol=1e-5)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        normalize(np.zeros((3, 4)), np.zeros((2, 4)))


@pytest.mark.parametrize("store_name", ["minilm", "gpt2", "roberta", "distilbert", "qwen2", "builtin"])
def test_attention_is_invariant_for_every_document(store_name, sentence_stores, builtin_store):
    store = builtin_store if store_name == "builtin" else sentence_stores[store_name]
    docs = store.documents["doc"].tolist()
    worst = 0.0
    for layer in store.layers:
        for head in range(store.n_heads):
            q2, k2 = normalize(store.queries(layer, head), store.keys(layer, head))
            assert not np.allclose(q2, store.queries(layer, head).astype(np.float32))  # it did transform
            for doc in docs:
                rows = store.doc_rows(doc)
                recomputed = attention_weights(
                    q2[rows], k2[rows], store.score_scale(layer), store.causal, store.attention_window(layer)
                )
                worst = max(worst, float(np.abs(recomputed - store.attention(doc, layer, head)).max()))
    assert worst < 2e-4


def test_cupy_arrays_stay_on_the_gpu():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("cupy sees no GPU")
    q, k = _random_head(cupy)
    q2, k2 = normalize(q, k)
    assert isinstance(q2, cupy.ndarray) and isinstance(k2, cupy.ndarray)
    _check_conditions(q2, k2, translate=True, scale=True)
    np.testing.assert_allclose(q2.get(), normalize(q.get(), k.get())[0], rtol=1e-5)
