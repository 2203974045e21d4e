"""What extraction feeds a model, whatever it reads: batches of inputs plus the rows of their tokens.

Text (:class:`~qkscale.models.text_inputs.TextInputs`) and images
(:class:`~qkscale.models.image_inputs.ImageInputs`) both turn one shard's documents into
:class:`Batch` objects; extraction runs the model on :attr:`Batch.inputs` and stores the tokens
where :attr:`Batch.real` is set, described by :attr:`Batch.token_rows`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import torch


@dataclass
class Batch:
    """One forward pass: model keyword inputs, which positions are real tokens, and their documents."""

    inputs: dict[str, torch.Tensor]
    real: torch.Tensor  # bool [batch, tokens]: False on padding
    # Built only when stored (a bare forward pass over the same batches skips them):
    documents: Callable[[], list[dict[str, Any]]]  # one docs.parquet record per document of the batch
    token_rows: Callable[[], dict[str, Any]]  # the token table columns of the real tokens, in gathered order

    @property
    def n_docs(self) -> int:
        return len(self.real)

    def to(self, device: str | torch.device) -> Batch:
        """The same batch with its tensors on ``device``."""
        inputs = {name: tensor.to(device) for name, tensor in self.inputs.items()}
        return Batch(inputs, self.real.to(device), self.documents, self.token_rows)


class ModelInputs(Protocol):
    """Turns documents into batches for one kind of model."""

    modality: str  # "text" or "image"
    token_schema: pa.Schema

    def batches(self, docs: list[tuple[int, Any]], batch_size: int, bucket: bool) -> Iterator[Batch]:
        """The batches of one shard's ``(doc_id, document)`` pairs, every document exactly once."""
        ...

    def count_tokens(self, documents: list[Any]) -> list[int]:
        """How many tokens each document gives (after truncation)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the preprocessing."""
        ...
