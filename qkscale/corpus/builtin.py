"""The builtin corpus: English prose every CPython install carries offline.

Sources, in this order: the language reference in ``pydoc_data.topics`` (sorted by topic),
then the docstrings of the standard library's modules, classes and functions (sorted by file,
read with :mod:`ast`, never imported). Paragraphs that look like code are dropped, the rest is
split into sentences, filtered and de-duplicated, keeping the first occurrence.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)(?<=[.!?])\s+(?=[A-Z(\"'])")
_CODE_LINE = re.compile(
    r"^\s*(>>>|\.\.\.|\$ |@\w|def |class \w+[(:]|import |from \S+ import |return\b|[\w.\[\]]+ [-+*/]?= )"
    r"|[{}]|;\s*$|^\s*(if|for|while|with|try|else|elif|except)\b.*:\s*$"
)
_CODE_IN_SENTENCE = re.compile(r"\s[-+*/]?=\s|==|!=|->|\(\)\.|\w\(\w")
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
        yield " ".join(line.strip() for line in lines)


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS) or sentence[-1] not in ".!?":
        return False
    if not sentence[0].isupper() or _CODE_IN_SENTENCE.search(sentence):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in sentence)
    return letters / len(sentence) >= 0.85


def sentences_of(text: str) -> Iterator[str]:
    """Yield the prose sentences of one text (code, headings and fragments removed)."""
    for paragraph in _paragraphs(text):
        paragraph = paragraph.replace("::", ":")
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


@functools.lru_cache(maxsize=1)
def builtin_sentences() -> tuple[str, ...]:
    """All sentences of the builtin corpus, de-duplicated, in a deterministic order."""
    seen: dict[str, None] = {}
    for text in _texts():
        for sentence in sentences_of(text):
            seen.setdefault(sentence, None)
    return tuple(seen)
