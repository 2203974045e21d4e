"""What the dashboard knows about tokens: their context, and token search over a whole store.

Regular expressions run on RE2 (linear time in the text: no pattern can stall the server); RE2
refuses what it cannot run in linear time (backreferences, lookaround) with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qkscale.errors import QKScaleError
from qkscale.store import Store
from qkscale.store.kinds import TOKEN_KINDS

__all__ = ["TOKEN_KINDS", "SearchError", "SearchResult", "compile_regex", "context_text", "search_tokens"]

SEARCH_MODES = ("exact", "case-insensitive", "regex")
CONTEXT_RADIUS = 4  # tokens either side of a token in its hover context


class SearchError(QKScaleError):
    """A search the user typed cannot run (empty, or a regex that does not compile)."""


def compile_regex(pattern: str):
    """``pattern`` compiled by RE2 (linear-time matching), or a :class:`SearchError` saying why it cannot be."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the reason goes into the message, not onto the server's stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise SearchError(
            f"the regular expression {pattern!r} does not compile: {reason} "
            "(RE2 syntax: no backreferences or lookaround)"
        ) from None


def context_text(words: list[str], i: int, radius: int = CONTEXT_RADIUS) -> str:
    """Word ``i`` in the middle of its neighbours, e.g. ``the quick [brown] fox jumps``."""
    left = " ".join(words[max(0, i - radius) : i])
    right = " ".join(words[i + 1 : i + 1 + radius])
    return f"{left} [{words[i]}] {right}".strip()


@dataclass(frozen=True)
class SearchResult:
    """Token ids (store rows) whose text matches a query."""

    query: str
    mode: str
    ids: np.ndarray
    n_docs: int

    def describe(self) -> str:
        count = len(self.ids)
        noun = "token" if count == 1 else "tokens"
        return f"{count:,} {noun} match {self.query!r} ({self.mode}) in {self.n_docs:,} documents"


def matching_entries(names: np.ndarray, query: str, mode: str) -> np.ndarray:
    """Which vocabulary entries ``names`` match ``query``: exactly, ignoring case, or as a regular expression."""
    if mode not in SEARCH_MODES:
        raise SearchError(f"unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
    if not query:
        raise SearchError("type a token to search for")
    index = pd.Index(np.asarray(names, dtype=object).astype(str))
    if mode == "exact":
        return np.asarray(index == query)
    if mode == "case-insensitive":
        return np.asarray(index.str.casefold() == query.casefold())
    pattern = compile_regex(query)
    return np.fromiter((pattern.search(n) is not None for n in index), bool, len(index))


def search_tokens(store: Store, query: str, mode: str) -> SearchResult:
    """Every token of ``store`` whose text matches ``query``.

    Matching runs over the vocabulary (distinct strings), then one shard at a time selects rows by
    their codes: memory is set by the shard size, and a search over millions of tokens is a scan
    of integer codes.
    """
    hits = matching_entries(store.vocabulary, query, mode)
    ids, docs = [], []
    index = store.shard_index
    for start, stop in zip(index.starts[:-1].tolist(), index.starts[1:].tolist(), strict=True):
        local = np.flatnonzero(hits[store.token_codes(slice(start, stop))])
        if len(local):
            ids.append(start + local)
            docs.append(np.unique(store.token_column("doc", slice(start, stop))[local]))
    found = np.concatenate(ids) if ids else np.empty(0, np.int64)
    n_docs = len(np.unique(np.concatenate(docs))) if docs else 0
    return SearchResult(query, mode, found, n_docs)
