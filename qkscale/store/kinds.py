"""Each token's kind (special, punctuation, word, subword, patch), decided once per vocabulary entry.

A subword is a word piece after the first: ``##ing`` under WordPiece, or a piece without the
word-start mark (``Ġ``/``▁``) that follows another piece under BPE and SentencePiece.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

TOKEN_KINDS = ["special", "punctuation", "word", "subword", "patch"]
_WORD_START = ("Ġ", "▁")  # byte-level BPE and SentencePiece mark the first piece of a word
_CONTINUATION = "##"  # WordPiece marks every later piece


def _is_punctuation(text: str) -> bool:
    text = text.lstrip("".join(_WORD_START))
    return bool(text) and all(unicodedata.category(c).startswith(("P", "S")) for c in text)


@dataclass(frozen=True)
class VocabularyClasses:
    """Per vocabulary entry: is it punctuation, is it a word's continuation piece."""

    punctuation: np.ndarray
    continuation: np.ndarray

    @classmethod
    def of(cls, names: np.ndarray) -> VocabularyClasses:
        names = pd.Index(np.asarray(names, dtype=object).astype(str))
        punctuation = np.fromiter((_is_punctuation(t) for t in names), bool, len(names))
        if names.str.startswith(_CONTINUATION).any():
            continuation = np.asarray(names.str.startswith(_CONTINUATION))
        else:
            marked = np.asarray(names.str.startswith(_WORD_START))
            continuation = ~marked if marked.any() else np.zeros(len(names), bool)
        return cls(punctuation, continuation)

    def kinds(
        self, codes: np.ndarray, position: np.ndarray, is_special: np.ndarray, patch_row: np.ndarray | None = None
    ) -> np.ndarray:
        """``int8`` index into :data:`TOKEN_KINDS` of tokens with vocabulary ``codes``."""
        kind = np.full(len(codes), TOKEN_KINDS.index("word"), np.int8)
        kind[self.continuation[codes] & (np.asarray(position) != 0)] = TOKEN_KINDS.index("subword")
        kind[self.punctuation[codes]] = TOKEN_KINDS.index("punctuation")
        if patch_row is not None:
            kind[np.asarray(patch_row) >= 0] = TOKEN_KINDS.index("patch")
        kind[np.asarray(is_special, bool)] = TOKEN_KINDS.index("special")
        return kind


def token_kinds(tokens: pd.DataFrame) -> pd.Categorical:
    """Each row's kind, for a token table held in memory (a small store's, or one document's)."""
    vocabulary = tokens["token"].astype("category")
    classes = VocabularyClasses.of(np.asarray(vocabulary.cat.categories))
    patch_row = tokens["patch_row"].to_numpy() if "patch_row" in tokens else None
    codes = vocabulary.cat.codes.to_numpy()
    kind = classes.kinds(codes, tokens["position"].to_numpy(), tokens["is_special"].to_numpy(), patch_row)
    return pd.Categorical.from_codes(kind, TOKEN_KINDS)
