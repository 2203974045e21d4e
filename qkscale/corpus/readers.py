"""Corpus sources: the builtin prose or files (.txt, .jsonl, .parquet, or a folder of them).

Every source streams its documents (memory stays bounded whatever the corpus size) and can be
checked in a first streaming pass (:meth:`Corpus.count`) so that bad input is reported before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from qkscale.errors import CorpusError

BUILTIN = "builtin"


def _read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 text file, refusing binary or other encodings."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise CorpusError(f"{path} is a binary file (NUL byte on line {number}), not UTF-8 text")
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path}: line {number} is not UTF-8 text") from None


def read_txt(path: Path) -> Iterator[str]:
    """One document per line."""
    for _, line in _read_text_lines(path):
        yield line


def read_jsonl(path: Path) -> Iterator[str]:
    """One JSON object per line, its document in the field ``text``."""
    for number, line in _read_text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CorpusError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f"{path}: line {number} has no string field 'text'")
        yield record["text"]


def read_parquet(path: Path) -> Iterator[str]:
    """The string column ``text``, read in row batches."""
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
    for batch in parquet.iter_batches(columns=["text"], batch_size=4096):
        yield from (text for text in batch.column(0).to_pylist() if text is not None)


READERS: dict[str, Callable[[Path], Iterator[str]]] = {".txt": read_txt, ".jsonl": read_jsonl, ".parquet": read_parquet}


@dataclass
class Corpus:
    """A named, ordered stream of non-empty documents."""

    spec: str
    files: list[Path] = field(default_factory=list)
    modality = "text"

    @property
    def is_builtin(self) -> bool:
        return self.spec == BUILTIN

    def documents(self) -> Iterator[str]:
        """Every document, stripped, empty ones skipped, in a deterministic order."""
        if self.is_builtin:
            from qkscale.corpus.builtin import builtin_sentences

            yield from builtin_sentences()
            return
        for path in self.files:
            for text in READERS[path.suffix.lower()](path):
                text = text.strip()
                if text:
                    yield text

    def count(self, limit: int | None = None) -> int:
        """Read the corpus (or its first ``limit`` documents) once, streaming, to check it.

        Raises :class:`CorpusError` on bad input or when there is no document.
        """
        n = sum(1 for _ in islice(self.documents(), limit))
        if n == 0:
            raise CorpusError(f"corpus {self.spec} holds no documents")
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
