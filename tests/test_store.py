"""The store: token table, one-head reads, documents, manifest, inspect."""

from __future__ import annotations

import json

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


def test_lazy_token_reads_equal_full_reads(builtin_store):
    full = builtin_store.tokens
    index = builtin_store.shard_index
    assert index.n_tokens == len(full) == builtin_store.n_tokens and len(index.shards) == 3
    across = slice(int(index.starts[1]) - 7, int(index.starts[2]) + 5)  # ends inside two other shards
    for rows in (slice(None), across, slice(3, 4), slice(10, 10)):
        for name in full.columns:
            np.testing.assert_array_equal(builtin_store.token_column(name, rows), full[name].to_numpy()[rows])
    vocabulary = builtin_store.vocabulary
    assert list(vocabulary) == sorted(set(full["token"]))
    assert (builtin_store.path / layout.VOCABULARY).is_file()
    np.testing.assert_array_equal(vocabulary[builtin_store.token_codes(across)], full["token"].to_numpy()[across])
    for doc in (0, 24, 25, 37, 59):
        expected = np.flatnonzero(full["doc"].to_numpy() == doc)
        rows = builtin_store.doc_rows(doc)
        assert (rows.start, rows.stop) == (expected[0], expected[-1] + 1)
        assert builtin_store.doc_of(rows.start) == doc == builtin_store.doc_of(rows.stop - 1)
        assert builtin_store.document(doc)["text"] == builtin_store.documents.loc[doc, "text"]
    for bad in (lambda: builtin_store.doc_rows(60), lambda: builtin_store.document(-1)):
        with pytest.raises(StoreError, match="document -?\\d+ is not in store"):
            bad()


def test_vector_reads_across_shards_and_batches(builtin_store):
    q = builtin_store.queries(4, 7)
    index = builtin_store.shard_index
    assert sum(len(b) - 1 for b in index.batch_starts) > len(index.shards)  # several record batches a shard
    for start in range(0, len(q), 97):
        rows = slice(start, start + 211)
        np.testing.assert_array_equal(builtin_store.queries(4, 7, rows), q[rows])
        np.testing.assert_array_equal(builtin_store.keys(4, 7, rows), builtin_store.keys(4, 7)[rows])


@pytest.mark.parametrize("damage", ["tokens", "vectors", "info"])
def test_a_shard_whose_files_disagree_is_a_one_line_error(tmp_path, builtin_store, damage):
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "store"
    shutil.copytree(builtin_store.path, copy)
    folder = layout.shard_dir(copy, 1)
    if damage == "tokens":
        table = pq.read_table(folder / layout.TOKENS)
        pq.write_table(table.slice(0, table.num_rows - 1), folder / layout.TOKENS)
    elif damage == "vectors":
        reader = ipc.open_file(pa.memory_map(str(folder / layout.VECTORS)))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches - 1)]
        with ipc.new_file(str(folder / "v.arrow"), reader.schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
        (folder / "v.arrow").replace(folder / layout.VECTORS)
    else:
        info = json.loads((folder / layout.SHARD_INFO).read_text())
        (folder / layout.SHARD_INFO).write_text(json.dumps({**info, "n_tokens": info["n_tokens"] + 3}))
    with pytest.raises(StoreError) as error:
        _ = qkscale.open_store(copy).n_tokens
    message = str(error.value)
    assert "\n" not in message and message.startswith("shard shards/00001 is inconsistent: tokens.parquet has")
