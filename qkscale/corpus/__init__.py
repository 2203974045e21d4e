"""Corpus readers: builtin prose, text/JSONL/Parquet files and folders, image folders; cut into shards."""

from qkscale.corpus.images import BUILTIN_IMAGES, ImageCorpus, open_image_corpus
from qkscale.corpus.index import CorpusIndex, Cursor
from qkscale.corpus.readers import BUILTIN, READERS, Corpus, open_corpus, shards

__all__ = [
    "BUILTIN",
    "BUILTIN_IMAGES",
    "READERS",
    "Corpus",
    "CorpusIndex",
    "Cursor",
    "ImageCorpus",
    "open_corpus",
    "open_image_corpus",
    "shards",
]
