"""Text documents to model inputs: tokenize (truncated), batch by length, right-pad."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from qkscale.models.inputs import Batch
from qkscale.store import layout

# A document is cut to max_length * this many characters before tokenization: far more than any
# tokenizer packs into max_length tokens of text, so only documents truncated anyway are cut.
CHARS_PER_TOKEN_BOUND = 32


def length_batches(lengths: list[int], batch_size: int, bucket: bool) -> Iterator[list[int]]:
    """Indices of each batch: documents of similar length together when ``bucket``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if bucket else list(range(len(lengths)))
    for start in range(0, len(order), batch_size):
        yield sorted(order[start : start + batch_size])


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (``[batch, longest]`` long tensors)."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return input_ids, mask


def _pick(items: list, indices: list[int]) -> list:
    return [items[i] for i in indices]


class TextInputs:
    """Tokenized, length-bucketed, right-padded batches of text documents."""

    modality = "text"
    token_schema = layout.TOKEN_SCHEMA

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        # Masked out either way: any id will do where the tokenizer has no pad token.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length}

    def count_tokens(self, documents: list[str]) -> list[int]:
        texts = [text[: self.max_length * CHARS_PER_TOKEN_BOUND] for text in documents]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [len(ids) for ids in encoded]

    def batches(self, docs: list[tuple[int, str]], batch_size: int, bucket: bool) -> Iterator[Batch]:
        tokenizer, max_length = self.tokenizer, self.max_length
        # Cut very long documents before tokenizing, so that work and memory follow max_length.
        texts = [text[: max_length * CHARS_PER_TOKEN_BOUND] for _, text in docs]
        encoded = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
        full_lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        n_special = tokenizer.num_special_tokens_to_add()
        ids: list[list[int]] = encoded["input_ids"]
        records = [
            {
                "doc": doc,
                "text": text,
                "n_tokens": len(row),
                "truncated": full + n_special > max_length or len(text) < len(original),
            }
            for (doc, original), text, row, full in zip(docs, texts, ids, full_lengths, strict=True)
        ]
        for batch in length_batches([len(row) for row in ids], batch_size, bucket):
            input_ids, mask = pad_batch([ids[i] for i in batch], self.pad_id)
            rows = partial(
                self._token_rows,
                [docs[i][0] for i in batch],
                [ids[i] for i in batch],
                [encoded["special_tokens_mask"][i] for i in batch],
            )
            documents = partial(_pick, records, batch)
            yield Batch({"input_ids": input_ids, "attention_mask": mask}, mask.bool(), documents, rows)

    def _token_rows(self, doc_ids: list[int], ids: list[list[int]], special: list[list[int]]) -> dict[str, Any]:
        lengths = np.array([len(row) for row in ids])
        flat_ids = [token for row in ids for token in row]
        positions = np.concatenate([np.arange(n) for n in lengths])
        doc_length = np.repeat(lengths, lengths)
        return {
            "doc": np.repeat(np.asarray(doc_ids, dtype=np.int64), lengths),
            "position": positions.astype(np.int32),
            "token": self.tokenizer.convert_ids_to_tokens(flat_ids),
            "token_id": np.asarray(flat_ids, dtype=np.int32),
            "is_special": np.asarray([flag for row in special for flag in row], dtype=bool),
            "doc_length": doc_length.astype(np.int32),
            "rel_position": (positions / np.maximum(doc_length - 1, 1)).astype(np.float32),
        }
