"""The on-disk store: manifest, token table, float16 Q/K vectors per head, atomic shard commits."""

from qkscale.store.store import Store, open_store, read_manifest
from qkscale.store.writer import ShardWriter

__all__ = ["ShardWriter", "Store", "open_store", "read_manifest"]
