"""Corpus sources: the builtin prose or files (.txt, .jsonl, .parquet, or a folder of them).

Every source streams its documents (memory stays bounded whatever the corpus size) and can be
checked in a first streaming pass (:meth:`Corpus.count`, or :meth:`Corpus.index`, which also records
where each shard starts) so that bad input is reported before anything is written. Each reader
takes the position to start from and yields ``((offset, number), text)``: for .txt/.jsonl the byte
offset and 1-based number of the line, for .parquet ``(row, row + 1)`` (see :mod:`qkscale.corpus.index`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from qkscale.corpus.index import Position, Sharded, Stamp, no_documents
from qkscale.errors import CorpusError

BUILTIN = "builtin"


def _read_text_lines(path: Path, start: Position) -> Iterator[tuple[Position, str]]:
    """``((byte_offset, line_number), line)`` of a UTF-8 text file from ``start``, refusing binary or other
    encodings."""
    offset, number = start
    with path.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            if b"\x00" in raw:
                raise CorpusError(f"{path} is a binary file (NUL byte on line {number}), not UTF-8 text")
            try:
                yield (offset, number), raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path}: line {number} is not UTF-8 text") from None
            offset += len(raw)
            number += 1


def read_txt(path: Path, start: Position) -> Iterator[tuple[Position, str]]:
    """One document per line."""
    yield from _read_text_lines(path, start)


def read_jsonl(path: Path, start: Position) -> Iterator[tuple[Position, str]]:
    """One JSON object per line, its document in the field ``text``."""
    for position, line in _read_text_lines(path, start):
        if not line.strip():
            continue
        number = position[1]
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CorpusError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f"{path}: line {number} has no string field 'text'")
        yield position, record["text"]


def _open_parquet(path: Path):
    """The ``pyarrow.parquet.ParquetFile`` at ``path``, checked to hold a string column ``text``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError):
        raise CorpusError(f"{path} is not a readable Parquet file") from None
    schema = parquet.schema_arrow
    text_type = schema.field("text").type if "text" in schema.names else None
    if text_type is None or not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise CorpusError(f"{path} has no string column 'text' (columns: {', '.join(schema.names)})")
    return parquet


def _row_groups_from(parquet, row: int) -> tuple[list[int], int]:
    """The row groups holding rows ``row`` and after, and the number of the first row of the first one."""
    first = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first + rows > row:
            return list(range(group, parquet.num_row_groups)), first
        first += rows
    return [], first


def read_parquet(path: Path, start: Position) -> Iterator[tuple[Position, str]]:
    """The string column ``text`` from row ``start[0]`` on, read in row batches of the row groups holding it;
    a document's position is ``(row, row + 1)``."""
    parquet = _open_parquet(path)
    row = start[0]
    groups, first = _row_groups_from(parquet, row)
    if not groups:
        return
    for batch in parquet.iter_batches(columns=["text"], batch_size=4096, row_groups=groups):
        skip = min(max(0, row - first), batch.num_rows)
        for number, text in enumerate(batch.column(0).slice(skip).to_pylist(), start=first + skip):
            if text is not None:
                yield (number, number + 1), text
        first += batch.num_rows


READERS: dict[str, Callable[[Path, Position], Iterator[tuple[Position, str]]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}


@dataclass
class Corpus(Sharded[str]):
    """A named, ordered stream of non-empty documents: the builtin prose (one source) or files."""

    spec: str
    files: list[Path] = field(default_factory=list)
    modality = "text"

    @property
    def is_builtin(self) -> bool:
        return self.spec == BUILTIN

    def _sources(self) -> list[Path | None]:
        return [None] if self.is_builtin else list(self.files)

    def _stamp_of(self, source: int) -> Stamp:
        """The builtin corpus is built from this Python's standard library: its count and fingerprint."""
        if not self.is_builtin:
            return super()._stamp_of(source)
        from qkscale.corpus.builtin import builtin_sentences

        return len(builtin_sentences()), int(self.describe()["fingerprint"], 16)

    def _read_source(self, source: int, start: Position) -> Iterator[tuple[Position, str]]:
        """The documents of one source, stripped, empty ones skipped."""
        for position, text in self._texts(source, start):
            text = text.strip()
            if text:
                yield position, text

    def _texts(self, source: int, start: Position) -> Iterator[tuple[Position, str]]:
        if not self.is_builtin:
            path = self.files[source]
            return READERS[path.suffix.lower()](path, start)
        from qkscale.corpus.builtin import builtin_sentences

        sentences = builtin_sentences()
        return (((index, index + 1), sentences[index]) for index in range(start[0], len(sentences)))

    def count(self, limit: int | None = None) -> int:
        """Read the corpus (or its first ``limit`` documents) once, streaming, to check it.

        Raises :class:`CorpusError` on bad input or when there is no document.
        """
        n = sum(1 for _ in islice(self.documents(), limit))
        if n == 0:
            raise no_documents(self.spec)
        return n

    def describe(self) -> dict[str, Any]:
        """Identity of the corpus for the manifest: its spec and a fingerprint of its files."""
        digest = hashlib.sha256()
        if self.is_builtin:
            from qkscale.corpus.builtin import builtin_sentences

            for text in builtin_sentences():
                digest.update(text.encode() + b"\n")
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"spec": self.spec, "files": len(self.files), "fingerprint": digest.hexdigest()[:16]}


def open_corpus(spec: str | Path) -> Corpus:
    """``builtin`` or a path: a .txt/.jsonl/.parquet file, or a folder searched recursively
    (hidden files and qkscale stores inside it are skipped)."""
    if str(spec) == BUILTIN:
        return Corpus(BUILTIN)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus path {spec} does not exist (give 'builtin' or a file or folder)")
    suffixes = ", ".join(READERS)
    if path.is_dir():
        files = _corpus_files(path)
        if not files:
            raise CorpusError(f"corpus folder {spec} holds no {suffixes} files")
    elif path.suffix.lower() in READERS:
        files = [path]
    else:
        raise CorpusError(f"corpus file {spec} is not one of {suffixes}")
    return Corpus(str(path.resolve()), [p.resolve() for p in files])


def _corpus_files(folder: Path) -> list[Path]:
    """Readable files under ``folder``, sorted; hidden paths and qkscale stores (an --out placed
    inside the corpus folder) are left out."""
    from qkscale.store import read_manifest

    stores = [m.parent for m in folder.rglob("manifest.json") if read_manifest(m.parent) is not None]
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in READERS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and not any(store in p.parents for store in stores)
    )


def shards(documents: Iterator[str], docs_per_shard: int) -> Iterator[list[tuple[int, str]]]:
    """Cut a document stream into consecutive shards of ``(doc_id, text)``; ids count from 0."""
    numbered = enumerate(documents)
    while shard := list(islice(numbered, docs_per_shard)):
        yield shard
