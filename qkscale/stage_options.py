"""Every stage's options, declared once (see :mod:`qkscale.options` for what derives from them).

This module imports nothing heavy: the CLI builds its flags from it before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from qkscale.options import option

DEFAULT_MODEL = "minilm"
METHODS = ("umap", "tsne", "pca")
DIMS = (2, 3)
DISTANCES = ("cosine", "euclidean")
DEFAULT_SAMPLE = 20_000
STORE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class ExtractOptions:
    """How to run the model over the corpus (``qkscale extract``, a job's top level, ``extract`` and ``sampling``)."""

    model: str = option(DEFAULT_MODEL, "'minilm' (packaged default) or a local model directory.", section="job")
    corpus: str = option(
        "auto",
        "'builtin' or a .txt/.jsonl/.parquet file or folder; for vision models 'builtin-images' or a folder "
        "of PNG/JPEG images (auto: builtin, or builtin-images for a vision model).",
        section="job",
    )
    max_length: int = option(128, "Tokens per document; longer ones are truncated.", min=2)
    batch_size: int = option(64, "Documents per forward pass.", min=1)
    limit_docs: int | None = option(None, "Only the first N documents.", min=1)
    max_tokens: int | None = option(
        None, "Only the first documents holding at most N tokens (instead of --limit-docs).", min=1, section="sampling"
    )
    layers: str | None = option(None, "Layers to store, e.g. 0,2-4 (default all).", selection=True)
    heads: str | None = option(
        None, "Query heads to store in each stored layer, e.g. 0-3,7 (default all).", selection=True
    )
    docs_per_shard: int = option(256, "Documents per shard: one task and one atomic commit.", min=1, section="sampling")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    dtype: str = option("auto", "auto (float32 on CPU, float16 on CUDA), float32, float16 or bfloat16.")
    store_dtype: str = option(
        "float16",
        "How vectors are stored: float16 (half the disk; a value beyond +-65504 is an error), bfloat16 "
        "(float32's range, 3 significant digits) or float32 (exact, twice the disk).",
        choices=STORE_DTYPES,
    )
    bucket: bool = option(True, "Batch documents of similar length together (fewer padded tokens).")
    q_module: str | None = option(None, "Generic adapter: query projection path with {layer}, e.g. layers.{layer}.q.")
    k_module: str | None = option(None, "Generic adapter: key projection path with {layer}.")
    n_heads: int | None = option(None, "Generic adapter: heads per layer (default: config).", min=1)
    head_dim: int | None = option(None, "Generic adapter: head size (default: config).", min=1)
    causal: bool = option(False, "Generic adapter: the model masks later tokens.")


@dataclass(frozen=True)
class ProjectOptions:
    """Which joint embeddings to compute (``qkscale project``, a job's ``projection``).

    Every (head, method, dims) is one unit of the project stage.
    """

    methods: tuple[str, ...] = option(
        ("umap",),
        "umap, tsne or pca.",
        choices=METHODS,
        aliases=("method",),
        choice_error="unknown method {value!r} (choose from {choices})",
    )
    dims: tuple[int, ...] = option((2,), "2 or 3.", choices=DIMS)
    backend: str = option("auto", "auto (cuml, else torchdr on a GPU, else cpu), cuml, torchdr or cpu.")
    layers: str | None = option(None, "Layers to project, e.g. 0,2-4 (default all stored).", selection=True)
    heads: str | None = option(None, "Heads to project, e.g. 0-3 (default all).", selection=True)
    sample: int = option(DEFAULT_SAMPLE, "Points fitted per head; the rest are placed by their neighbours.", min=1)
    metric: str = option(
        "cosine",
        "cosine (as AttentionViz) or euclidean.",
        choices=DISTANCES,
        choice_error="unknown metric {value!r} (choose from {choices})",
    )
    seed: int = option(0, "Random seed (CPU results are reproducible).")
    translate: bool = option(True, "Translate keys so that their centroid meets the queries'.")
    scale: bool = option(True, "Scale keys so that their mean norm matches the queries'.")
