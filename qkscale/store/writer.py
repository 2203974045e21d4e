"""Write one shard of a store: vectors stream to disk batch by batch, then one atomic commit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from qkscale.store import dtypes, layout
from qkscale.store.files import commit_dir, temp_sibling


class ShardWriter:
    """Collects the batches of one shard in a temp folder; :meth:`commit` renames it into place."""

    def __init__(
        self,
        root: Path,
        shard: int,
        layers: Sequence[int],
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        token_schema: pa.Schema = layout.TOKEN_SCHEMA,
        heads: Sequence[int] | None = None,
        dtype: str = dtypes.DEFAULT,
    ):
        self.final = layout.shard_dir(root, shard)
        self.temp = temp_sibling(self.final)
        self.temp.mkdir(parents=True)
        self.layers = list(layers)
        self.head_dim = head_dim
        self.heads = layout.stored_heads(n_heads, n_kv_heads, heads)  # the stored heads of each kind
        self._stored = dtypes.stored_numpy(dtype)
        fields = [
            pa.field(layout.vector_column(kind, layer, head), dtypes.arrow_type(dtype, head_dim))
            for kind in "qk"
            for layer in self.layers
            for head in self.heads[kind]
        ]
        self._sink = pa.OSFile(str(self.temp / layout.VECTORS), "wb")
        self._schema = pa.schema(fields)
        self._vectors = ipc.new_file(self._sink, self._schema)
        self._token_schema = token_schema
        self._tokens: list[pa.RecordBatch] = []
        self._docs: list[dict] = []

    def write_batch(self, tokens: dict[str, np.ndarray | list], queries: np.ndarray, keys: np.ndarray) -> None:
        """Append one batch: token rows, ``[n_layers, stored heads, n_tokens, head_dim]`` q and k.

        The vectors come as the store holds them (:func:`~qkscale.store.dtypes.stored_numpy`: as
        :meth:`~qkscale.models.QKCapture.gathered` gives them), of the stored heads only.
        """
        columns = []
        for kind, vectors in (("q", queries), ("k", keys)):
            layers, heads = len(self.layers), len(self.heads[kind])
            if vectors.dtype != self._stored or vectors.ndim != 4 or vectors.shape[:2] != (layers, heads):
                raise ValueError(
                    f"{kind} vectors must be {self._stored} [{layers}, {heads}, tokens, {self.head_dim}], "
                    f"not {vectors.dtype} {list(vectors.shape)}"
                )
            for layer_index in range(len(self.layers)):
                for index in range(len(self.heads[kind])):
                    flat = pa.array(np.ascontiguousarray(vectors[layer_index, index]).reshape(-1))
                    columns.append(pa.FixedSizeListArray.from_arrays(flat, self.head_dim))
        self._vectors.write_batch(pa.record_batch(columns, schema=self._schema))
        self._tokens.append(pa.record_batch(tokens, schema=self._token_schema))

    def add_documents(self, docs: list[dict]) -> None:
        """Record the shard's documents: ``doc``, ``text``, ``n_tokens``, ``truncated`` (+ image fields)."""
        self._docs.extend(docs)

    def abort(self) -> None:
        """Drop the unfinished shard (its temp folder); safe to call after a failed commit."""
        try:
            if not self._sink.closed:
                self._sink.close()  # the IPC footer is not needed: the file is thrown away
        finally:
            shutil.rmtree(self.temp, ignore_errors=True)

    def commit(self) -> dict:
        """Finish the files, then atomically rename the shard into the store. Returns its info."""
        self._vectors.close()
        self._sink.close()
        tokens = pa.Table.from_batches(self._tokens, schema=self._token_schema)
        pq.write_table(tokens, self.temp / layout.TOKENS)
        docs = pa.Table.from_pylist(sorted(self._docs, key=lambda d: d["doc"]))
        pq.write_table(docs, self.temp / layout.DOCS)
        info = {
            "n_docs": docs.num_rows,
            "n_tokens": tokens.num_rows,
            "truncated_docs": int(sum(d["truncated"] for d in self._docs)),
            "first_doc": min(d["doc"] for d in self._docs),
        }
        (self.temp / layout.SHARD_INFO).write_text(json.dumps(info))
        commit_dir(self.temp, self.final)
        return info
