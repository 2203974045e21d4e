"""Non-finite values: caught at capture (naming layer, head and document), refused by projection and
metrics, never made by the joint normalisation; and the store dtypes that are the way out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from conftest import INITIALIZER_RANGE, MAX_LENGTH, SENTENCES
from test_oracle import _assert_store_matches_model

import qkscale
from qkscale.errors import NonFiniteError, OptionError, QKScaleError, StoreError
from qkscale.joint import normalize_with_info
from qkscale.metrics import compute_metrics
from qkscale.project import project
from qkscale.store import ShardWriter, Store, layout, open_store, read_manifest
from qkscale.store.checks import check_finite, first_non_finite

HEAD_DIM = 16
LOUD = 1e5  # queries of the loud head are this much larger, its keys this much smaller: scores are unchanged


def _save_bert(folder: Path, edit=None) -> str:
    """A small random BERT with MiniLM's tokenizer; ``edit(model)`` changes its weights before saving."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from qkscale.models.loader import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    config = AutoConfig.for_model(
        "bert",
        vocab_size=tokenizer.vocab_size,
        hidden_size=3 * HEAD_DIM,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=128,
        initializer_range=INITIALIZER_RANGE,
    )
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _head_rows(head: int) -> slice:
    return slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)


def _loud_layer1_head2(model) -> None:
    """Layer 1 head 2: queries x LOUD, keys / LOUD, so that q exceeds float16 while attention stays the same."""
    attention = model.encoder.layer[1].attention.self
    rows = _head_rows(2)
    for module, factor in ((attention.query, LOUD), (attention.key, 1 / LOUD)):
        module.weight[rows] *= factor
        module.bias[rows] *= factor


def _nan_query_layer1_head1(model) -> None:
    model.encoder.layer[1].attention.self.query.weight[_head_rows(1)][3, 5] = float("nan")


def _nan_embedding_of_fox(model) -> None:
    from transformers import AutoTokenizer

    from qkscale.models.loader import resolve_source

    fox = AutoTokenizer.from_pretrained(resolve_source("minilm")).convert_tokens_to_ids("fox")
    model.embeddings.word_embeddings.weight[fox] = float("nan")


@pytest.fixture(scope="module")
def berts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("berts")
    edits = {"loud": _loud_layer1_head2, "nan_query": _nan_query_layer1_head1, "nan_fox": _nan_embedding_of_fox}
    return {name: _save_bert(root / name, edit) for name, edit in edits.items()}


def _extract(model: str, corpus: Path, out: Path, **options) -> Store:
    return qkscale.extract(
        model, corpus, out, max_length=MAX_LENGTH, batch_size=4, docs_per_shard=4, progress=False, **options
    )


def _assert_nothing_committed(out: Path) -> None:
    manifest = read_manifest(out)
    assert manifest is not None and manifest["complete"] is False
    assert Store(out).committed_shards() == []
    assert [p.name for p in (out / layout.SHARDS).iterdir()] == []  # the failed shard's temp folder is gone


# -- capture ---------------------------------------------------------------------------------------
def test_float16_overflow_names_the_first_value_beyond_it(berts, sentences_file, tmp_path):
    """The error names exactly the first value (in store row order) that float16 cannot hold."""
    exact = _extract(berts["loud"], sentences_file, tmp_path / "float32", store_dtype="float32")
    q = exact.queries(1, 2)
    assert q.dtype == np.float32 and np.abs(q).max() > 65504
    with np.errstate(over="ignore"):
        overflows = np.isinf(q.astype(np.float16))
        assert not np.isinf(exact.queries(1, 1).astype(np.float16)).any()  # only the loud head overflows
    row = int(np.flatnonzero(overflows.any(axis=1))[0])
    value = q[row, np.flatnonzero(overflows[row])[0]]
    tokens = exact.tokens
    doc, position = int(tokens["doc"][row]), int(tokens["position"][row])

    with pytest.raises(QKScaleError) as caught:
        _extract(berts["loud"], sentences_file, tmp_path / "float16")
    message = str(caught.value)
    assert isinstance(caught.value.__cause__, NonFiniteError)
    assert (
        f"a query in layer 1 head 2, document {doc} (position {position}) is {value:.4g}, beyond float16's "
        "largest 65504: store this model with --store-dtype float32"
    ) in message
    assert "\n" not in message
    _assert_nothing_committed(tmp_path / "float16")


def test_float32_store_of_the_loud_model_passes_the_oracle(berts, sentences_file, tmp_path):
    store = _extract(berts["loud"], sentences_file, tmp_path / "s", store_dtype="float32")
    assert store.manifest["store_dtype"] == "float32" and store.vector_dtype == "float32"
    assert np.abs(store.queries(1, 2)).max() > 65504
    _assert_store_matches_model(store, berts["loud"], "loud bert")


def test_cli_overflow_is_one_line_and_exit_2(berts, sentences_file, tmp_path):
    out = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(Path(qkscale.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "qkscale.cli", "extract", "--model", berts["loud"], "--corpus", sentences_file]
    command += ["--out", out, "--max-length", MAX_LENGTH, "--batch-size", 4]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("qkscale: error:")]
    assert len(errors) == 1
    assert "a query in layer 1 head 2, document " in errors[0]
    assert errors[0].endswith("store this model with --store-dtype float32")
    _assert_nothing_committed(out)


def test_nan_from_the_weights_names_layer_head_and_document(berts, sentences_file, tmp_path):
    with pytest.raises(QKScaleError) as caught:
        _extract(berts["nan_query"], sentences_file, tmp_path / "s")
    assert (
        "a query in layer 1 head 1, document 0 (position 0) is nan as the model computed it (in float32): "
        "check the model's weights"
    ) in str(caught.value)
    _assert_nothing_committed(tmp_path / "s")
    # Only stored heads are checked: without head 1 the same model extracts.
    store = _extract(berts["nan_query"], sentences_file, tmp_path / "without", heads="0,2")
    assert store.complete and np.isfinite(store.queries(1, 2)).all()


def test_nan_token_names_its_document_and_position(berts, sentences_file, tmp_path):
    """A NaN embedding of 'fox' (document 1, position 4: [CLS] the quick brown fox) poisons that token first."""
    assert SENTENCES[1].split()[3] == "fox"
    with pytest.raises(QKScaleError, match=r"a query in layer 0 head 0, document 1 \(position 4\) is nan"):
        _extract(berts["nan_fox"], sentences_file, tmp_path / "s")


# -- store dtypes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dtype_stores(tmp_path_factory, sentences_file) -> dict[str, Store]:
    """MiniLM over SENTENCES in every store dtype."""
    root = tmp_path_factory.mktemp("dtypes")
    return {
        dtype: _extract("minilm", sentences_file, root / dtype, store_dtype=dtype)
        for dtype in ("float16", "bfloat16", "float32")
    }


def test_bfloat16_round_trip(dtype_stores):
    exact, half = dtype_stores["float32"], dtype_stores["bfloat16"]
    assert half.manifest["store_dtype"] == "bfloat16"
    schema = ipc.open_file(pa.memory_map(str(layout.shard_dir(half.path, 0) / layout.VECTORS))).schema
    assert schema.field("q.0.0").type == pa.list_(pa.uint16(), half.head_dim)  # Arrow has no bfloat16: its bits
    for layer, head in ((0, 0), (5, 11)):
        for read_exact, read_half in ((exact.queries, half.queries), (exact.keys, half.keys)):
            values = read_half(layer, head)
            rounded = torch.from_numpy(read_exact(layer, head)).to(torch.bfloat16).float().numpy()
            assert values.dtype == np.float32
            np.testing.assert_array_equal(values, rounded)
            ids = np.array([1, 7, half.n_tokens - 1])
            np.testing.assert_array_equal(read_half(layer, head, ids), rounded[ids])
    assert not np.array_equal(half.queries(0, 0), exact.queries(0, 0))  # bfloat16 did round


def test_readers_return_float16_only_for_float16_stores(dtype_stores):
    for dtype, expected in (("float16", np.float16), ("bfloat16", np.float32), ("float32", np.float32)):
        store = dtype_stores[dtype]
        assert store.queries(2, 3).dtype == expected and store.keys(2, 3, slice(2, 9)).dtype == expected


def test_every_consumer_reads_float32_stores(dtype_stores):
    """Attention, metrics and a projection of a bfloat16 store agree with the float16 store's."""
    half, reference = dtype_stores["bfloat16"], dtype_stores["float16"]
    np.testing.assert_allclose(half.attention(3, 2, 1), reference.attention(3, 2, 1), atol=2e-2)
    ours, theirs = compute_metrics(half, progress=False), compute_metrics(reference, progress=False)
    np.testing.assert_allclose(ours["entropy"], theirs["entropy"], rtol=2e-2)
    project(half, method="pca", layers=[2], heads=[1], progress=False)
    assert np.isfinite(half.projection(2, 1, "pca")[["x", "y"]].to_numpy()).all()


def test_store_dtype_is_part_of_the_identity(dtype_stores, sentences_file, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(dtype_stores["float16"].path, out)
    with pytest.raises(StoreError, match=r"another store_dtype \(float16 there, float32 now\)"):
        _extract("minilm", sentences_file, out, store_dtype="float32")
    # A store written before the option names no store_dtype: it is float16, and resumes as such.
    manifest = json.loads((out / layout.MANIFEST).read_text())
    del manifest["store_dtype"]
    (out / layout.MANIFEST).write_text(json.dumps(manifest))
    legacy = _extract("minilm", sentences_file, out)
    assert legacy.vector_dtype == "float16" and legacy.queries(0, 0).dtype == np.float16
    with pytest.raises(StoreError, match="another store_dtype"):
        _extract("minilm", sentences_file, out, store_dtype="bfloat16")


def test_unknown_store_dtype_is_an_option_error(sentences_file, tmp_path):
    with pytest.raises(OptionError, match="--store-dtype must be one of float16, bfloat16, float32, not 'float64'"):
        _extract("minilm", sentences_file, tmp_path / "s", store_dtype="float64")
    assert not (tmp_path / "s").exists()


def test_writer_takes_vectors_only_as_the_store_holds_them(tmp_path):
    writer = ShardWriter(tmp_path, 0, [0], n_heads=2, head_dim=4, dtype="bfloat16")
    try:
        with pytest.raises(ValueError, match="q vectors must be uint16"):
            writer.write_batch({}, np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 4), np.uint16))
    finally:
        writer.abort()


# -- projection and metrics refuse damaged heads -----------------------------------------------------------
def _damage(store: Store, kind: str, layer: int, head: int, row: int) -> None:
    """Rewrite the vectors.arrow holding ``row`` with a NaN in one value of that head's column."""
    shard = int(store.shard_index.shards[store.shard_index.position_of_row(row)])
    local = row - store.shard_rows(shard).start
    path = layout.shard_dir(store.path, shard) / layout.VECTORS
    reader = ipc.open_file(pa.BufferReader(path.read_bytes()))  # in memory: the file is rewritten below
    batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    name = layout.vector_column(kind, layer, head)
    rewritten = []
    for batch in batches:
        if 0 <= local < batch.num_rows:
            values = batch.column(name).flatten().to_numpy().copy()
            values[local * store.head_dim + 1] = np.nan
            column = pa.FixedSizeListArray.from_arrays(pa.array(values), store.head_dim)
            batch = batch.set_column(batch.schema.get_field_index(name), name, column)
        local -= batch.num_rows
        rewritten.append(batch)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, batches[0].schema) as writer:
        for batch in rewritten:
            writer.write_batch(batch)


@pytest.fixture
def damaged(sentence_stores, tmp_path) -> tuple[Store, int]:
    """A copy of MiniLM's sentence store with a NaN in L1H2's queries and in L3H0's keys, in its second shard."""
    shutil.copytree(sentence_stores["minilm"].path, tmp_path / "s")
    assert not open_store(tmp_path / "s").has_metrics and not open_store(tmp_path / "s").projections()
    store = open_store(tmp_path / "s")
    row = store.shard_rows(1).start + 3
    _damage(store, "q", 1, 2, row)
    _damage(store, "k", 3, 0, row + 1)
    return open_store(store.path), row


def test_projection_refuses_a_damaged_head(damaged):
    store, row = damaged
    with pytest.raises(QKScaleError) as caught:
        project(store, method="pca", layers=[1], heads=[2], progress=False)
    expected = f"head L1H2 (queries) holds non-finite vectors (first at token {row}); run `qkscale verify {store.path}`"
    assert expected in str(caught.value)
    keys = rf"head L3H0 \(keys\) holds non-finite vectors \(first at token {row + 1}\)"
    with pytest.raises(QKScaleError, match=keys):
        project(store, method="pca", layers=[3], heads=[0], progress=False)
    assert store.projections() == {}
    project(store, method="pca", layers=[1], heads=[1], progress=False)  # an intact head of the same store
    assert store.projections() == {"pca-2d": [(1, 1)]}


def test_metrics_refuse_a_damaged_store(damaged, run_cli):
    store, row = damaged
    code, _, err = run_cli("metrics", store.path)
    assert code == 2 and "Traceback" not in err
    error = err.splitlines()[-1]  # after the progress bar's line
    assert error.startswith("qkscale: error: ") and err.count("qkscale: error:") == 1
    assert error.endswith(
        f"head L1H2 (queries) holds non-finite vectors (first at token {row}); run `qkscale verify {store.path}`"
    )
    assert not store.has_metrics


def test_first_non_finite():
    values = np.ones((6, 4), np.float16)
    assert first_non_finite(values) is None
    assert first_non_finite(np.empty((0, 4), np.float32)) is None
    values[4, 2] = np.inf
    assert first_non_finite(values) == 4
    values[1, 0], values[1, 3] = np.inf, -np.inf  # they cancel to NaN in a sum, and are found still
    assert first_non_finite(values) == 1
    largest = np.full((1000, 64), 65504, np.float16)  # finite, though their float16 sum would not be
    assert first_non_finite(largest) is None
    with pytest.raises(NonFiniteError, match=r"^head L0H1 holds non-finite vectors \(first at token 101\)!$"):
        check_finite(values, "head L0H1", first_row=100, hint="!")


# -- joint normalisation ------------------------------------------------------------------------------
def test_normalisation_refuses_non_finite_vectors():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    k[7, 3] = np.nan
    for translate in (True, False):
        with pytest.raises(NonFiniteError, match="queries or keys hold NaN or infinite values"):
            normalize_with_info(q, k, translate=translate)


@pytest.mark.parametrize("case", ["zero queries", "zero keys", "identical queries", "identical keys"])
@pytest.mark.parametrize("translate", [True, False])
def test_degenerate_heads_keep_scale_one_and_finite_points(case, translate):
    """Identical queries too: their mean norm exceeds their centroid's only by rounding (c was noise, up to 15)."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        q, k = rng.normal(size=(10, 32)).astype(np.float32), rng.normal(size=(10, 32)).astype(np.float32)
        if case == "zero queries":
            q[:] = 0
        elif case == "zero keys":
            k[:] = 0
        elif case == "identical queries":
            q[:] = 100 * q[0]
        else:
            k[:] = k[0]
        q2, k2, info = normalize_with_info(q, k, translate=translate)
        assert np.isfinite(q2).all() and np.isfinite(k2).all()
        if translate or case.startswith("zero"):  # untranslated, identical vectors still have a norm to match
            assert info.scale == 1.0, seed
