"""The builtin corpus: English prose every CPython install carries offline.

Sources, in this order: the language reference in ``pydoc_data.topics`` (sorted by topic),
then the docstrings of the standard library's modules, classes and functions (sorted by file,
read with :mod:`ast`, never imported). Paragraphs that look like code are dropped, the rest is
split into sentences, filtered and de-duplicated, keeping the first occurrence.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from qkscale.store.files import write_json_atomic

_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)(?<=[.!?])\s+(?=[A-Z(\"'])")
_CODE_LINE = re.compile(
    r"^\s*(>>>|\.\.\.|\$ |@\w|def |class \w+[(:]|import |from \S+ import |return\b|[\w.\[\]]+ [-+*/]?= )"
    r"|[{}]|;\s*$|^\s*(if|for|while|with|try|else|elif|except)\b.*:\s*$"
)
_CODE_IN_SENTENCE = re.compile(r"\s[-+*/]?=\s|==|!=|->|\(\)\.|\w\(\w")
_LIST_MARKER = re.compile(r"^([*\-\u2022]|\(?\d+[.)]|\(?[a-z][.)]|\[\d+\])\s+")
_PROSE_CHARS = re.compile(r"[\w\s.,;:!?'\"()*/\[\]\-\u2018\u2019\u201c\u201d]")
_STRONG = re.compile(r"\*\*(\w[^*]*?)\*\*")  # reST **emphasis**, not the ** operator
_UNDERLINE = re.compile(r"^\s*([=*\-~^#+])\1{2,}\s*$")
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
MIN_WORDS, MAX_WORDS = 4, 80


def _paragraphs(text: str) -> Iterator[str]:
    """Yield prose paragraphs of a reST-like text, joined into one line each."""
    follows_literal = False
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        literal = follows_literal
        follows_literal = lines[-1].rstrip().endswith("::")
        if literal and lines[0].startswith((" ", "\t")):
            continue  # a literal (code) block after "::"
        if any(_UNDERLINE.match(line) or _CODE_LINE.search(line) for line in lines):
            continue
        yield _LIST_MARKER.sub("", " ".join(line.strip() for line in lines))


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or sentence[-1] not in ".!?":
        return False
    if not sentence[0].isupper() or _CODE_IN_SENTENCE.search(sentence):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    prose = len(_PROSE_CHARS.findall(sentence))
    return letters / len(sentence) >= 0.75 and prose / len(sentence) >= 0.95


def sentences_of(text: str) -> Iterator[str]:
    """Yield the prose sentences of one text (code, headings and fragments removed)."""
    for paragraph in _paragraphs(text):
        paragraph = _STRONG.sub(r"\1", paragraph.replace("::", ":"))
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            if sentence and _is_prose(sentence):
                yield sentence


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path for path in root.rglob("*.py") if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )


def _texts() -> Iterator[str]:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    for name in sorted(topics):
        yield topics[name]
    for path in _stdlib_files():
        yield from _docstrings(path)


def _build() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for text in _texts():
        for sentence in sentences_of(text):
            seen.setdefault(sentence, None)
    return tuple(seen)


def _cache_file() -> Path:
    """Where the built corpus is kept: one file per Python version and version of this module."""
    key = hashlib.sha256(f"{sys.version}\0{sysconfig.get_paths()['stdlib']}\0".encode())
    key.update(Path(__file__).read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qkscale"
    return root / f"builtin-corpus-{key.hexdigest()[:16]}.json"


@functools.lru_cache(maxsize=1)
def builtin_sentences() -> tuple[str, ...]:
    """All sentences of the builtin corpus, de-duplicated, in a deterministic order.

    Building takes seconds (every stdlib file is parsed), so the result is cached on disk.
    """
    cache = _cache_file()
    try:
        return tuple(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    sentences = _build()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, list(sentences))
    except OSError:
        pass  # a read-only home: build again next time
    return sentences
