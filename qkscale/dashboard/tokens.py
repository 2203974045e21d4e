"""What the dashboard knows about tokens: their kind, their context, and token search."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.errors import QKScaleError

TOKEN_KINDS = ["special", "punctuation", "word", "subword", "patch"]
SEARCH_MODES = ("exact", "case-insensitive", "regex")
CONTEXT_RADIUS = 4  # tokens either side of a token in its hover context
_WORD_START = ("Ġ", "▁")  # byte-level BPE and SentencePiece mark the first piece of a word
_CONTINUATION = "##"  # WordPiece marks every later piece


class SearchError(QKScaleError):
    """A search the user typed cannot run (empty, or a regex that does not compile)."""


def _is_punctuation(text: str) -> bool:
    text = text.lstrip("".join(_WORD_START))
    return bool(text) and all(unicodedata.category(c).startswith(("P", "S")) for c in text)


def token_kinds(tokens: pd.DataFrame) -> pd.Categorical:
    """Each token's kind: special, punctuation, word, subword (or patch, for an image's patches).

    A subword is a word piece after the first: ``##ing`` under WordPiece, or a piece without the
    word-start mark (``Ġ``/``▁``) that follows another piece under BPE and SentencePiece.
    """
    vocabulary = tokens["token"].astype("category")
    names = vocabulary.cat.categories.astype(str)
    punctuation = np.fromiter((_is_punctuation(t) for t in names), bool, len(names))
    wordpiece = names.str.startswith(_CONTINUATION).any()
    if wordpiece:
        continuation = np.asarray(names.str.startswith(_CONTINUATION))
    else:
        marked = np.asarray(names.str.startswith(_WORD_START))
        continuation = ~marked if marked.any() else np.zeros(len(names), bool)
    codes = vocabulary.cat.codes.to_numpy()
    kind = np.full(len(tokens), TOKEN_KINDS.index("word"), np.int8)
    first = tokens["position"].to_numpy() == 0
    kind[continuation[codes] & ~first] = TOKEN_KINDS.index("subword")
    kind[punctuation[codes]] = TOKEN_KINDS.index("punctuation")
    if "patch_row" in tokens:
        kind[tokens["patch_row"].to_numpy() >= 0] = TOKEN_KINDS.index("patch")
    kind[tokens["is_special"].to_numpy()] = TOKEN_KINDS.index("special")
    return pd.Categorical.from_codes(kind, TOKEN_KINDS)


def token_contexts(tokens: pd.DataFrame, radius: int = CONTEXT_RADIUS) -> pd.Categorical:
    """Each token in the middle of its neighbours, e.g. ``the quick [brown] fox jumps``."""
    text = tokens["token"].astype(str).to_numpy()
    doc = tokens["doc"].to_numpy()
    contexts = np.empty(len(text), object)
    starts = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
    for start, stop in zip(starts, np.r_[starts[1:], len(text)], strict=True):
        words = text[start:stop].tolist()
        for i in range(len(words)):
            left = " ".join(words[max(0, i - radius) : i])
            right = " ".join(words[i + 1 : i + 1 + radius])
            contexts[start + i] = f"{left} [{words[i]}] {right}".strip()
    return pd.Categorical(contexts)


@dataclass(frozen=True)
class SearchResult:
    """Token ids (rows of ``Store.tokens``) whose text matches a query."""

    query: str
    mode: str
    ids: np.ndarray
    n_docs: int

    def describe(self) -> str:
        count = len(self.ids)
        noun = "token" if count == 1 else "tokens"
        return f"{count:,} {noun} match {self.query!r} ({self.mode}) in {self.n_docs:,} documents"


def search_tokens(tokens: pd.DataFrame, vocabulary: pd.Categorical, query: str, mode: str) -> SearchResult:
    """Every token whose text matches ``query``: exactly, ignoring case, or as a regular expression.

    Matching runs over the distinct token strings, then selects rows by their codes, so a search
    over millions of tokens takes milliseconds.
    """
    if mode not in SEARCH_MODES:
        raise SearchError(f"unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
    if not query:
        raise SearchError("type a token to search for")
    names = pd.Index(vocabulary.categories.astype(str))
    if mode == "exact":
        hits = names == query
    elif mode == "case-insensitive":
        hits = names.str.casefold() == query.casefold()
    else:
        try:
            pattern = re.compile(query)
        except re.error as exc:
            raise SearchError(f"the regular expression {query!r} does not compile: {exc}") from None
        hits = np.fromiter((pattern.search(n) is not None for n in names), bool, len(names))
    ids = np.flatnonzero(np.asarray(hits)[vocabulary.codes])
    n_docs = int(pd.unique(tokens["doc"].to_numpy()[ids]).size)
    return SearchResult(query, mode, ids, n_docs)
