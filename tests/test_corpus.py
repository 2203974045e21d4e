"""Corpus readers: builtin prose, .txt / .jsonl / .parquet files and folders."""

from __future__ import annotations

import json
import os
import pickle
import re
import tracemalloc
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qkscale.corpus import Corpus, CorpusIndex, Cursor, ImageCorpus, open_corpus, open_image_corpus, shards
from qkscale.corpus.builtin import _build, builtin_sentences, sentences_of
from qkscale.errors import CorpusError, OptionError


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
    with pytest.raises(CorpusError, match=message):
        open_corpus(path).index(2)


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


def _folder_corpus(folder: Path) -> Path:
    """Text files of every kind, with empty documents, so that shards cross file boundaries."""
    folder.mkdir()
    (folder / "a.txt").write_text("alpha one\n\n   \n alpha two \nalpha three\n", encoding="utf-8")
    lines = [{"text": "beta one"}, {"text": "  "}, {"text": "beta two"}, {"text": "beta three"}]
    (folder / "b.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n", encoding="utf-8")
    sub = folder / "sub"
    sub.mkdir()
    texts = [None if i % 4 == 1 else "" if i % 5 == 2 else f"gamma {i}" for i in range(23)]
    pq.write_table(pa.table({"text": texts}), sub / "c.parquet", row_group_size=4)
    assert pq.ParquetFile(sub / "c.parquet").num_row_groups == 6
    (sub / "d.txt").write_text("delta one\ndelta two\n", encoding="utf-8")
    return folder


def _image_folder(folder: Path) -> Path:
    (folder / "nested").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "nested/c.png", "nested/d.png", "e.png"]):
        Image.fromarray(np.full((8 + i, 8, 3), 40 * i, dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    return folder


def _open(kind: str, tmp_path: Path) -> Corpus | ImageCorpus:
    """A corpus of ``kind`` made of real files under ``tmp_path``."""
    if kind in ("builtin", "builtin-images"):
        pytest.importorskip("skimage")
        return open_corpus(kind) if kind == "builtin" else open_image_corpus(kind)
    if kind == "images":
        return open_image_corpus(_image_folder(tmp_path / "images"))
    folder = _folder_corpus(tmp_path / "corpus")
    path = {"txt": "a.txt", "jsonl": "b.jsonl", "parquet": "sub/c.parquet", "folder": "."}[kind]
    return open_corpus(folder / path)


def _expected(corpus: Corpus | ImageCorpus, docs_per_shard: int, limit: int | None) -> list[tuple[int, Any]]:
    """What today's ``shards()`` gives, flattened."""
    return [pair for shard in shards(islice(corpus.documents(), limit), docs_per_shard) for pair in shard]


KINDS = ["builtin", "txt", "jsonl", "parquet", "folder", "images", "builtin-images"]


@pytest.mark.parametrize("kind", KINDS)
def test_read_shard_gives_the_shards(tmp_path, kind):
    corpus = _open(kind, tmp_path)
    for docs_per_shard in (1, 3, 7, 5000):
        for limit in (None, 5, 11):
            index = corpus.index(docs_per_shard, limit)
            expected = _expected(corpus, docs_per_shard, limit)
            assert index.n_docs == len(expected) and index.docs_per_shard == docs_per_shard
            assert index.n_shards == len(index.cursors) == -(-len(expected) // docs_per_shard)
            index = CorpusIndex.from_dict(json.loads(json.dumps(index.to_dict())))
            read = [corpus.read_shard(index, shard) for shard in range(index.n_shards)]
            assert [pair for shard in read for pair in shard] == expected, (docs_per_shard, limit)
            middle = index.n_shards // 2
            first = middle * docs_per_shard
            assert corpus.read_shard(index, middle) == expected[first : first + docs_per_shard]
    assert pickle.loads(pickle.dumps(index)) == index


def test_shards_cross_file_boundaries(tmp_path):
    corpus = open_corpus(_folder_corpus(tmp_path / "corpus"))
    index = corpus.index(2)
    assert [cursor.file for cursor in index.cursors] == [0, 0, 1] + [2] * 7 + [3]
    assert corpus.read_shard(index, 1) == [(2, "alpha three"), (3, "beta one")]
    assert corpus.read_shard(index, 9) == [(18, "gamma 20"), (19, "delta one")]
    rows = [cursor.offset for cursor in index.cursors if cursor.file == 2]
    assert any(row % 4 for row in rows), "some shards start inside a row group"


def test_read_shard_seeks_to_its_cursor(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"document number {i}\n" for i in range(1000)), encoding="utf-8")
    corpus = open_corpus(path)
    index = corpus.index(100)
    assert index.cursors[1] == Cursor(0, len("".join(f"document number {i}\n" for i in range(100))), 101)
    # spoil the first line in place, keeping size and time: only a reader that seeks still works
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.write(b"\x00")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert corpus.read_shard(index, 5) == [(i, f"document number {i}") for i in range(500, 600)]
    with pytest.raises(CorpusError, match="binary file"):
        corpus.read_shard(index, 0)


def test_index_memory_does_not_grow_with_documents(tmp_path):
    path = tmp_path / "big.txt"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(200_000):
            handle.write(f"document number {i}\n")
    corpus = open_corpus(path)
    tracemalloc.start()
    index = corpus.index(50_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert index.n_docs == 200_000 and index.n_shards == 4
    assert peak < path.stat().st_size / 20


@pytest.mark.parametrize("kind", ["txt", "parquet", "folder", "images"])
def test_changed_file_is_refused(tmp_path, kind):
    corpus = _open(kind, tmp_path)
    index = corpus.index(2)
    paths = corpus.files if isinstance(corpus, Corpus) else [image.path for image in corpus.images]
    changed = paths[-1]
    changed.write_bytes(changed.read_bytes() + b"\n")
    with pytest.raises(CorpusError, match=f"corpus file {re.escape(str(changed))} changed since") as error:
        corpus.read_shard(index, index.n_shards - 1)
    assert "\n" not in str(error.value)
    changed.unlink()
    with pytest.raises(CorpusError, match="changed since"):
        corpus.read_shard(index, index.n_shards - 1)
    if len(paths) > 1:
        assert corpus.read_shard(index, 0) == _expected(corpus, 2, 2), "shards of unchanged files still read"


def test_bad_shards_and_foreign_indexes(tmp_path):
    corpus = _open("folder", tmp_path)
    index = corpus.index(4)
    for shard in (-1, index.n_shards):
        with pytest.raises(CorpusError, match=f"shard {shard} is out of range"):
            corpus.read_shard(index, shard)
    other = open_corpus(corpus.files[0])
    with pytest.raises(CorpusError, match="index was made for"):
        other.read_shard(index, 0)
    with pytest.raises(OptionError, match="docs_per_shard"):
        corpus.index(0)
    with pytest.raises(CorpusError, match="holds no documents"):
        corpus.index(3, limit=0)
