"""The on-disk store: manifest, token table, Q/K vectors per head (float16 by default), atomic shard commits."""

from qkscale.store.store import Store, create_store, finish_store, open_store, read_manifest
from qkscale.store.writer import ShardWriter

__all__ = ["ShardWriter", "Store", "create_store", "finish_store", "open_store", "read_manifest"]
