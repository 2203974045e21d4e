"""Shard index of a corpus: where each shard starts, so that a task reads only its own documents.

A corpus is read as a list of sources one after another (its files; the builtin corpus is one
source). :meth:`Sharded.index` streams the corpus once, checking it like ``count()``, and records
one :class:`Cursor` per shard: the position of the shard's first document.

- ``file``: index of the source in the corpus's file list (0 for the builtin corpus; for an
  image corpus, the index of the image, one file per document).
- ``offset``: where to seek in that source: the byte offset of the line (.txt, .jsonl), the row
  (.parquet; reading starts at the row group holding it), the sentence index (builtin); 0 for an
  image.
- ``number``: the 1-based number of that line/row/sentence, so error messages keep their line.

:meth:`Sharded.read_shard` seeks to the cursor and reads ``docs_per_shard`` documents, going on
into the following sources when needed; before it opens a file it compares its size and
modification time with those the index recorded. The index holds O(shards + files) integers,
never documents, and is JSON-serialisable (:meth:`CorpusIndex.to_dict`, :meth:`CorpusIndex.from_dict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from qkscale.errors import CorpusError, OptionError

Position = tuple[int, int]  # (offset, number) of a document inside one source
Stamp = tuple[int, int] | None  # (size, mtime_ns) of a file; (count, fingerprint) of the builtin corpus
Document = TypeVar("Document")


class Cursor(NamedTuple):
    """Where a document starts: its source (file) index, the offset to seek to and its 1-based number."""

    file: int
    offset: int
    number: int


START = Cursor(0, 0, 1)


@dataclass(frozen=True)
class CorpusIndex:
    """Where each shard of a corpus starts (one :class:`Cursor` per shard) and the files' stamps."""

    spec: str
    n_docs: int
    docs_per_shard: int
    n_shards: int
    cursors: tuple[Cursor, ...]
    stamps: tuple[Stamp, ...]

    def shard_docs(self, shard: int) -> range:
        """The document ids of ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise CorpusError(f"shard {shard} is out of range: corpus {self.spec} has shards 0-{self.n_shards - 1}")
        first = shard * self.docs_per_shard
        return range(first, min(first + self.docs_per_shard, self.n_docs))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (cursors and stamps become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusIndex:
        """The inverse of :meth:`to_dict` (also after a JSON round trip)."""
        cursors = tuple(Cursor(*cursor) for cursor in data["cursors"])
        stamps = tuple(None if stamp is None else (stamp[0], stamp[1]) for stamp in data["stamps"])
        return cls(**{**data, "cursors": cursors, "stamps": stamps})


def no_documents(spec: str) -> CorpusError:
    """The error for a corpus (or a limit) that leaves no document."""
    return CorpusError(f"corpus {spec} holds no documents")


def _stamp(path: Path | None) -> Stamp:
    if path is None:
        return None
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class Sharded(Generic[Document]):
    """Documents, index and shards of a corpus read as a list of sources; subclasses give the sources."""

    spec: str

    def _sources(self) -> list[Path | None]:
        """The files read one after another (None for a source that is not a file)."""
        raise NotImplementedError

    def _read_source(self, source: int, start: Position) -> Iterator[tuple[Position, Document]]:
        """The documents of one source from ``start``, each with its position."""
        raise NotImplementedError

    def _stamp_of(self, source: int) -> Stamp:
        """What tells whether a source changed: a file's size and modification time."""
        return _stamp(self._sources()[source])

    def _check_unchanged(self, source: int, stamp: Stamp) -> None:
        try:
            current = self._stamp_of(source)
        except OSError:
            current = None
        if current != stamp:
            where = self._sources()[source] or self.spec
            raise CorpusError(f"corpus file {where} changed since the corpus was indexed; plan the extraction again")

    def _records(
        self, start: Cursor = START, stamps: tuple[Stamp, ...] | None = None
    ) -> Iterator[tuple[Cursor, Document]]:
        """Every document from ``start`` with its cursor; with ``stamps``, each file is checked before it is read."""
        sources = self._sources()
        for source in range(start.file, len(sources)):
            if stamps is not None:
                self._check_unchanged(source, stamps[source])
            first = (start.offset, start.number) if source == start.file else (START.offset, START.number)
            for (offset, number), document in self._read_source(source, first):
                yield Cursor(source, offset, number), document

    def documents(self) -> Iterator[Document]:
        """Every document, in a deterministic order."""
        return (document for _, document in self._records())

    def index(self, docs_per_shard: int, limit: int | None = None) -> CorpusIndex:
        """Read the corpus (or its first ``limit`` documents) once, streaming: check it and find where each
        shard of ``docs_per_shard`` documents starts. Raises :class:`CorpusError` on bad input or no document."""
        if docs_per_shard < 1:
            raise OptionError(f"docs_per_shard must be at least 1, not {docs_per_shard}")
        stamps = tuple(self._stamp_of(source) for source in range(len(self._sources())))
        cursors: list[Cursor] = []
        n_docs = 0
        for cursor, _ in islice(self._records(), limit):
            if n_docs % docs_per_shard == 0:
                cursors.append(cursor)
            n_docs += 1
        if n_docs == 0:
            raise no_documents(self.spec)
        return CorpusIndex(self.spec, n_docs, docs_per_shard, len(cursors), tuple(cursors), stamps)

    def read_shard(self, index: CorpusIndex, shard: int) -> list[tuple[int, Document]]:
        """The ``(doc_id, document)`` pairs of ``shard``, read from its cursor on."""
        if index.spec != self.spec or len(index.stamps) != len(self._sources()):
            raise CorpusError(f"the corpus index was made for {index.spec}, not for corpus {self.spec}")
        ids = index.shard_docs(shard)
        records = islice(self._records(index.cursors[shard], index.stamps), len(ids))
        return [(doc, document) for doc, (_, document) in zip(ids, records, strict=False)]
