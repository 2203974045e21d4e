"""The on-disk store: manifest, token table, float16 Q/K vectors per head, atomic shard commits."""

from qkscale.store.store import Store, create_store, finish_store, open_store, read_manifest
from qkscale.store.writer import ShardWriter

__all__ = ["ShardWriter", "Store", "create_store", "finish_store", "open_store", "read_manifest"]
