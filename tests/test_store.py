"""The store: token table, one-head reads, documents, manifest, inspect."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import MAX_LENGTH, SENTENCES
from transformers import AutoTokenizer

import qkscale
from qkscale.errors import StoreError
from qkscale.models.loader import resolve_source
from qkscale.models.text_inputs import CHARS_PER_TOKEN_BOUND
from qkscale.store import layout


@pytest.mark.parametrize("family", ["minilm", "gpt2"])
def test_token_table_matches_tokenizer(family, sentence_stores, model_sources):
    store = sentence_stores[family]
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model_sources[family]))
    tokens = store.tokens
    assert list(tokens.columns) == list(layout.TOKEN_SCHEMA.names)
    assert sorted(tokens["doc"].unique()) == list(range(len(SENTENCES)))
    for doc, text in enumerate(SENTENCES):
        encoded = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_special_tokens_mask=True)
        rows = tokens.iloc[store.doc_rows(doc)]
        n = len(encoded["input_ids"])
        assert rows["token_id"].tolist() == encoded["input_ids"]
        assert rows["token"].tolist() == tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        assert rows["is_special"].tolist() == [bool(f) for f in encoded["special_tokens_mask"]]
        assert rows["position"].tolist() == list(range(n))
        assert (rows["doc_length"] == n).all()
        np.testing.assert_allclose(rows["rel_position"], np.arange(n) / max(n - 1, 1), rtol=1e-6)
    assert not tokens.duplicated(["doc", "position"]).any()


def test_special_tokens_are_flagged(sentence_stores):
    tokens = sentence_stores["minilm"].tokens
    assert set(tokens.loc[tokens["is_special"], "token"]) == {"[CLS]", "[SEP]"}
    assert (tokens.loc[tokens["position"] == 0, "token"] == "[CLS]").all()


def _full_vectors(store) -> dict[str, np.ndarray]:
    """Every column of every shard's vectors file, read whole with pyarrow."""
    tables = [
        ipc.open_file(pa.memory_map(str(layout.shard_dir(store.path, s) / layout.VECTORS))).read_all()
        for s in store.committed_shards()
    ]
    table = pa.concat_tables(tables)
    return {
        name: table[name].combine_chunks().flatten().to_numpy().reshape(-1, store.head_dim)
        for name in table.column_names
    }


def test_one_head_reads_equal_full_arrays(builtin_store):
    full = _full_vectors(builtin_store)
    assert len(full) == 2 * len(builtin_store.layers) * builtin_store.n_heads
    for layer in builtin_store.layers:
        for head in range(builtin_store.n_heads):
            q, k = builtin_store.queries(layer, head), builtin_store.keys(layer, head)
            assert q.dtype == np.float16 and q.shape == (builtin_store.n_tokens, builtin_store.head_dim)
            np.testing.assert_array_equal(q, full[f"q.{layer}.{head}"])
            np.testing.assert_array_equal(k, full[f"k.{layer}.{head}"])
    rows = builtin_store.doc_rows(37)  # a document in the middle shard
    np.testing.assert_array_equal(builtin_store.queries(2, 3, rows), full["q.2.3"][rows])


def test_heads_differ(builtin_store):
    assert not np.array_equal(builtin_store.queries(0, 0), builtin_store.queries(0, 1))
    assert not np.array_equal(builtin_store.queries(0, 0), builtin_store.keys(0, 0))


def test_documents_and_manifest(builtin_store):
    docs = builtin_store.documents
    assert len(docs) == 60 and docs["doc"].tolist() == list(range(60))
    assert (docs["n_tokens"].to_numpy() == builtin_store.tokens.groupby("doc").size().to_numpy()).all()
    manifest = builtin_store.manifest
    assert manifest["complete"] and builtin_store.complete
    assert manifest["n_tokens"] == len(builtin_store.tokens)
    assert manifest["model"]["source"] == "minilm" and manifest["corpus"]["spec"] == "builtin"
    assert (builtin_store.n_layers, builtin_store.n_heads, builtin_store.head_dim) == (6, 12, 32)


@pytest.mark.parametrize("family", ["minilm", "gpt2"])
def test_truncated_documents_are_counted(family, sentence_stores, model_sources):
    store = sentence_stores[family]
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model_sources[family]))
    expected = [len(tokenizer(text)["input_ids"]) > MAX_LENGTH for text in SENTENCES]
    assert store.documents["truncated"].tolist() == expected and expected[-1] and not expected[0]
    assert store.manifest["truncated_docs"] == sum(expected)
    assert store.tokens["doc_length"].max() == MAX_LENGTH


def test_layer_subset(tmp_path, sentences_file, sentence_stores):
    full = sentence_stores["minilm"]
    store = qkscale.extract(
        corpus=sentences_file,
        out=tmp_path / "s",
        layers="1,3-4",
        progress=False,
        max_length=MAX_LENGTH,
        batch_size=4,
        docs_per_shard=4,
    )
    assert store.layers == [1, 3, 4] and store.n_layers == 6
    for layer in store.layers:
        np.testing.assert_array_equal(store.queries(layer, 5), full.queries(layer, 5))
        np.testing.assert_array_equal(store.keys(layer, 5), full.keys(layer, 5))
    with pytest.raises(StoreError, match="layer 2 is not stored"):
        store.queries(2, 0)
    with pytest.raises(StoreError, match="head 12 is out of range"):
        store.keys(1, 12)


def test_inspect_reports_store(run_cli, builtin_store):
    code, out, _ = run_cli("inspect", builtin_store.path)
    assert code == 0
    assert "6 layers x 12 heads x 32 dims" in out and "complete" in out and "60 of 60" in out
    code, out, _ = run_cli("inspect", builtin_store.path, "--json")
    assert code == 0 and f'"tokens": {builtin_store.n_tokens}' in out


def test_tokenizer_without_any_special_token(tmp_path, sentences_file):
    from conftest import _save_tiny_gpt2

    model = _save_tiny_gpt2(tmp_path / "model", special_tokens=False)
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert tokenizer.pad_token is None and tokenizer.eos_token is None
    store = qkscale.extract(
        str(model), sentences_file, tmp_path / "s", batch_size=4, max_length=MAX_LENGTH, progress=False
    )
    expected = [len(tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]) for text in SENTENCES]
    assert store.documents["n_tokens"].tolist() == expected
    assert not store.tokens["is_special"].any()


def test_store_inside_the_corpus_folder_is_not_read_as_corpus(tmp_path, run_cli):
    (tmp_path / "docs.txt").write_text("A first document.\nA second one.\n", encoding="utf-8")
    for _ in range(2):  # the rerun must not pick up the store's own parquet files as corpus
        code, _, stderr = run_cli("extract", "--corpus", tmp_path, "--out", tmp_path / "store")
        assert code == 0, stderr
    assert qkscale.open_store(tmp_path / "store").manifest["n_docs"] == 2


def test_huge_document_is_cut_before_tokenizing(tmp_path):
    text = " ".join(f"word{i}" for i in range(100_000))  # 688 kB on one line
    (tmp_path / "huge.txt").write_text(text + "\nA short one.\n", encoding="utf-8")
    store = qkscale.extract(corpus=tmp_path / "huge.txt", out=tmp_path / "s", max_length=16, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    expected = tokenizer(text, truncation=True, max_length=16)["input_ids"]
    assert store.tokens["token_id"].iloc[store.doc_rows(0)].tolist() == expected
    assert store.documents["truncated"].tolist() == [True, False]
    assert len(store.documents["text"].iat[0]) <= 16 * CHARS_PER_TOKEN_BOUND


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        qkscale.open_store(tmp_path / "missing")
    with pytest.raises(StoreError, match="not a qkscale store"):
        qkscale.open_store(tmp_path)
