"""Corpus readers: builtin prose, text/JSONL/Parquet files and folders, cut into shards."""

from qkscale.corpus.readers import BUILTIN, READERS, Corpus, open_corpus, shards

__all__ = ["BUILTIN", "READERS", "Corpus", "open_corpus", "shards"]
