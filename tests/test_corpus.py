"""Corpus readers: builtin prose, .txt / .jsonl / .parquet files and folders."""

from __future__ import annotations

import json
import re
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qkscale.corpus import open_corpus, shards
from qkscale.corpus.builtin import _build, builtin_sentences, sentences_of
from qkscale.errors import CorpusError


def test_builtin_corpus_is_clean_prose():
    sentences = builtin_sentences()
    assert 12_000 <= len(sentences) <= 30_000
    assert len(set(sentences)) == len(sentences)
    for sentence in sentences:
        assert sentence[0].isupper() and sentence[-1] in ".!?"
        assert not sentence.startswith((">>>", "...")) and " = " not in sentence
        assert not re.search(r"\bdef \w+\(", sentence)
    assert list(open_corpus("builtin").documents()) == list(sentences)
    assert _build() == sentences, "the on-disk cache holds what a fresh build gives"


def test_code_is_removed_from_prose():
    text = (
        "Heading\n*******\n\nThis function returns a value. It is useful for testing::\n\n"
        "   x = compute(1)\n   print(x)\n\n>>> compute(2)\n4\n\nThe end of the story is near.\n"
    )
    # the heading, the literal block after "::", the doctest and the fragment ending in ":" all go
    assert list(sentences_of(text)) == ["This function returns a value.", "The end of the story is near."]


def test_file_formats_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\n  second doc  \n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "third doc", "id": 1}) + "\n\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    pq.write_table(pa.table({"text": ["fourth doc", None, "fifth doc"]}), sub / "c.parquet")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    corpus = open_corpus(tmp_path)
    assert list(corpus.documents()) == ["first doc", "second doc", "third doc", "fourth doc", "fifth doc"]
    assert corpus.count() == 5 and corpus.count(limit=2) == 2
    assert [[d for d, _ in shard] for shard in shards(corpus.documents(), 2)] == [[0, 1], [2, 3], [4]]
    assert list(open_corpus(tmp_path / "b.jsonl").documents()) == ["third doc"]


def test_reading_streams_a_large_file(tmp_path):
    path = tmp_path / "big.txt"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(200_000):
            handle.write(f"document number {i}\n")
    tracemalloc.start()
    documents = open_corpus(path).documents()
    assert next(documents) == "document number 0"
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < path.stat().st_size / 20, "the first document came without reading the whole file"
    assert sum(1 for _ in documents) == 199_999


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "line 1 is not UTF-8"),
        ("binary.txt", b"ok line\n\x00\x01\x02\n", "binary file"),
        ("bad.jsonl", b'{"text": "fine"}\nnot json\n', "line 2 is not valid JSON"),
        ("nofield.jsonl", b'{"body": "x"}\n', "no string field 'text'"),
        ("bad.parquet", b"not parquet at all", "not a readable Parquet file"),
        ("empty.txt", b"\n   \n", "holds no documents"),
    ],
)
def test_bad_files_are_refused(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        open_corpus(path).count()


def test_bad_corpus_paths(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match="holds no"):
        open_corpus(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="is not one of"):
        open_corpus(tmp_path / "x.csv")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(CorpusError, match="no string column 'text'"):
        open_corpus(tmp_path / "nocol.parquet").count()
