"""Larger text corpora for the benchmarks, made from the builtin one (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from qkscale.corpus.builtin import builtin_sentences


def write_windows(path: Path, width: int = 4) -> Path:
    """One document per line: each run of ``width`` consecutive builtin sentences (about 1.2M tokens at 4).

    With MiniLM and ``max_length`` 128 this gives 15,572 documents of about 78 tokens each, the
    corpus of the 1M-token benchmark stores. Written atomically; an existing file is kept.
    """
    if path.exists():
        return path
    sentences = builtin_sentences()
    lines = (" ".join(sentences[i : i + width]) for i in range(len(sentences) - width + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text("\n".join(lines), encoding="utf-8")
    temp.replace(path)
    return path
