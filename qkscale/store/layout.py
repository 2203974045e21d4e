"""Names of the files and columns of a store (the on-disk contract of DESIGN.md).

```
STORE/
  manifest.json            model, layers, heads, store_dtype, score scales, corpus, options, shard plan,
                           complete
  vocabulary.parquet       every distinct token string, sorted (written when the store is complete)
  shards/00000/            one folder per shard, committed by an atomic rename
    tokens.parquet         one row per token, in the row order of vectors.arrow
                           (+ image, patch_row, patch_col for vision models)
    docs.parquet           one row per document: doc, text, n_tokens, truncated
                           (+ width, height, thumbnail JPEG bytes for images)
    vectors.arrow          Arrow IPC file; one column per (kind, layer, head):
                           "q.{layer}.{head}" / "k.{layer}.{head}", fixed_size_list<value>[head_dim]
                           where value is the manifest's store_dtype: float16 (the default, and
                           what a manifest without store_dtype means), float32, or for bfloat16
                           uint16 holding each value's bits (the upper half of its float32)
    shard.json             n_docs, n_tokens, truncated_docs, first_doc
```
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

FORMAT = "qkscale-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOB = "job.json"  # written by `qkscale run` / `submit` (qkscale.jobs)
SHARDS = "shards"
TOKENS = "tokens.parquet"
DOCS = "docs.parquet"
VECTORS = "vectors.arrow"
SHARD_INFO = "shard.json"
VOCABULARY = "vocabulary.parquet"  # every distinct token string, written when the store is finished
TOKEN_SCHEMA = pa.schema(
    [
        ("doc", pa.int64()),
        ("position", pa.int32()),
        ("token", pa.string()),
        ("token_id", pa.int32()),
        ("is_special", pa.bool_()),
        ("doc_length", pa.int32()),
        ("rel_position", pa.float32()),
    ]
)
# Stores of vision models: each token is a prefix token (CLS, ...; patch_row = patch_col = -1) or a patch.
IMAGE_TOKEN_SCHEMA = (
    TOKEN_SCHEMA.append(pa.field("image", pa.string()))
    .append(pa.field("patch_row", pa.int32()))
    .append(pa.field("patch_col", pa.int32()))
)


def shard_dir(root: Path, shard: int) -> Path:
    return root / SHARDS / f"{shard:05d}"


def stored_heads(n_heads: int, n_kv_heads: int | None, heads: Sequence[int] | None) -> dict[str, list[int]]:
    """The stored heads of each kind: query heads ``heads`` (all if None), and the key/value heads they read."""
    query_heads = list(range(n_heads)) if heads is None else list(heads)
    group = n_heads // (n_kv_heads or n_heads)  # query heads per key/value head
    return {"q": query_heads, "k": sorted({head // group for head in query_heads})}


def vector_column(kind: str, layer: int, head: int) -> str:
    """Column of the queries (``kind='q'``) or keys (``'k'``) of one head."""
    return f"{kind}.{layer}.{head}"
