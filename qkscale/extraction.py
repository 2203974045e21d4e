"""The extract stage: run a model over a corpus and store every requested head's Q and K.

:func:`plan_extraction` checks every input (model config, layers, corpus, output folder) before
anything is written; :func:`extract_shard` turns one shard of documents into one committed shard
folder (the unit a Dask task will run); :func:`extract` ties them together with a progress bar.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from qkscale import __version__
from qkscale.corpus import BUILTIN, BUILTIN_IMAGES, Corpus, ImageCorpus, open_corpus, open_image_corpus, shards
from qkscale.errors import CorpusError, OptionError, QKScaleWarning, StoreError
from qkscale.models import DEFAULT_MODEL, Family, ModelInfo, QKCapture, inspect_model, load_model, score_scales
from qkscale.models.image_inputs import ImageInputs
from qkscale.models.inputs import ModelInputs
from qkscale.models.loader import (
    attention_windows,
    load_preprocessor,
    resolve_device,
    resolve_dtype,
    resolve_source,
    weightless_model,
)
from qkscale.models.text_inputs import TextInputs
from qkscale.selection import parse_selection
from qkscale.store import ShardWriter, Store, layout, read_manifest
from qkscale.store.files import remove_temps, write_json_atomic

# Fields of the manifest that must match for an existing store to be resumed.
_IDENTITY = ("model", "layers", "corpus", "options")


@dataclass
class ExtractionPlan:
    """Everything an extraction needs, checked: nothing has been written yet."""

    info: ModelInfo
    family: Family
    layers: list[int]
    corpus: Corpus | ImageCorpus
    n_docs: int
    out: Path
    max_length: int
    batch_size: int
    docs_per_shard: int
    limit_docs: int | None
    device: str
    dtype: str
    bucket: bool
    identity: dict[str, Any]

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_docs / self.docs_per_shard)

    @property
    def modality(self) -> str:
        return self.corpus.modality

    def documents(self) -> Iterator[Any]:
        return islice(self.corpus.documents(), self.limit_docs)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise OptionError(f"--{name} must be a positive number, not {value}")


def plan_extraction(
    model: str = DEFAULT_MODEL,
    corpus: str | Path = "auto",
    out: str | Path = "store",
    *,
    max_length: int = 128,
    batch_size: int = 64,
    limit_docs: int | None = None,
    max_tokens: int | None = None,
    layers: str | Sequence[int] | None = None,
    docs_per_shard: int = 1024,
    device: str = "auto",
    dtype: str = "auto",
    bucket: bool = True,
    q_module: str | None = None,
    k_module: str | None = None,
    n_heads: int | None = None,
    head_dim: int | None = None,
    causal: bool = False,
    check_device: bool = True,
) -> ExtractionPlan:
    """Validate every input, cheapest first; raise a :class:`QKScaleError` on the first bad one.

    ``max_tokens`` keeps the first documents that hold at most that many tokens (it sets
    ``limit_docs``, so it reads the corpus through the tokenizer once). ``check_device=False``
    takes ``device`` as given: a job's workers, not this process, will run the model.
    """
    if max_tokens is not None and limit_docs is not None:
        raise OptionError("give --max-tokens or --limit-docs, not both")
    for name, value in (
        ("max-length", max_length),
        ("batch-size", batch_size),
        ("limit-docs", limit_docs),
        ("max-tokens", max_tokens),
        ("docs-per-shard", docs_per_shard),
        ("n-heads", n_heads),
        ("head-dim", head_dim),
    ):
        _positive(name, value)
    if max_length < 2:
        raise OptionError("--max-length must be at least 2")
    device = resolve_device(device) if check_device else device
    dtype = resolve_dtype(dtype, device)
    info, family = inspect_model(model, q_module, k_module, n_heads, head_dim, causal)
    if info.max_positions and max_length > info.max_positions:
        raise OptionError(f"--max-length {max_length} exceeds the model's {info.max_positions} positions")
    chosen = parse_selection(layers, info.n_layers, "layers")
    out = Path(out).expanduser()
    _check_out_is_usable(out)
    source = _open_corpus_for(family, corpus, info.model_type)
    if max_tokens is not None:
        limit_docs = _docs_within(source, load_inputs(info.source, family, max_length), max_tokens)
    n_docs = source.count(limit_docs)
    identity = {
        "model": info.as_dict(),
        "layers": chosen,
        "corpus": source.describe(),
        # Everything that changes the stored rows: batches decide the row order within a shard.
        "options": {
            "max_length": max_length,
            "docs_per_shard": docs_per_shard,
            "limit_docs": limit_docs,
            "max_tokens": max_tokens,
            "batch_size": batch_size,
            "bucket": bucket,
            "dtype": dtype,
        },
    }
    _check_resumable(out, identity)
    return ExtractionPlan(
        info=info,
        family=family,
        layers=chosen,
        corpus=source,
        n_docs=n_docs,
        out=out,
        max_length=max_length,
        batch_size=batch_size,
        docs_per_shard=docs_per_shard,
        limit_docs=limit_docs,
        device=device,
        dtype=dtype,
        bucket=bucket,
        identity=identity,
    )


def _open_corpus_for(family: Family, corpus: str | Path, model_type: str) -> Corpus | ImageCorpus:
    """Images for a vision model, text for the others (``auto``: the builtin one); a mismatch is an error."""
    if str(corpus) == "auto":
        corpus = BUILTIN_IMAGES if family.vision else BUILTIN
    if family.vision:
        if str(corpus) == BUILTIN:
            raise CorpusError(f"'{model_type}' is a vision model: give --corpus {BUILTIN_IMAGES} or a folder of images")
        images = open_image_corpus(corpus)
        if images.skipped:
            warnings.warn(images.skipped_message(), QKScaleWarning, stacklevel=3)
        return images
    if str(corpus) == BUILTIN_IMAGES:
        raise CorpusError(f"'{model_type}' reads text: {BUILTIN_IMAGES} needs a vision model (ViT, DeiT, DINOv2)")
    return open_corpus(corpus)


def _docs_within(source: Corpus | ImageCorpus, inputs: ModelInputs, max_tokens: int) -> int:
    """How many first documents of ``source`` hold at most ``max_tokens`` tokens (at least one)."""
    total = n_docs = 0
    for chunk in shards(source.documents(), 1024):
        for count in inputs.count_tokens([document for _, document in chunk]):
            if total + count > max_tokens:
                return max(n_docs, 1)
            total += count
            n_docs += 1
    return max(n_docs, 1)


def _check_out_is_usable(out: Path) -> None:
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if ancestor != out and not (ancestor.is_dir() and os.access(ancestor, os.W_OK)):
        raise StoreError(f"--out {out} cannot be created: {ancestor} is not a writable folder")
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} exists and is not a qkscale store")
    # A job writes its job.json first; an interrupted writer leaves temps: neither makes it a store.
    leftovers_only = (
        all(p.name.startswith(".tmp-") or p.name == layout.JOB for p in out.iterdir()) if out.is_dir() else True
    )
    if not leftovers_only and read_manifest(out) is None:
        raise StoreError(f"--out {out} exists and is not a qkscale store (choose a new or empty folder)")


def _check_resumable(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a store made with other settings, naming the first that differs."""
    manifest = read_manifest(out)
    if manifest is None:
        return
    for key in _IDENTITY:
        theirs, ours = manifest.get(key), identity[key]
        if theirs == ours:
            continue
        if isinstance(theirs, dict) and isinstance(ours, dict):
            field_name = next(f for f in [*ours, *theirs] if theirs.get(f) != ours.get(f))
            difference = f"{field_name}: {theirs.get(field_name)} there, {ours.get(field_name)} now"
        else:
            difference = f"{theirs} there, {ours} now"
        raise StoreError(
            f"store {out} was made with another {key} ({difference}); use a new --out or the same settings to resume"
        )


@dataclass
class LoadedModel:
    """A model ready to extract from: loaded once, reused for every shard (and, later, every task)."""

    model: Any
    inputs: ModelInputs
    capture: QKCapture
    device: str

    @classmethod
    def load(cls, plan: ExtractionPlan) -> LoadedModel:
        model = load_model(plan.info.source, plan.device, plan.dtype)
        info = plan.info
        inputs = load_inputs(info.source, plan.family, plan.max_length, getattr(torch, plan.dtype))
        capture = QKCapture(model, plan.family, plan.layers, info.n_heads, info.head_dim, info.n_kv_heads)
        return cls(model, inputs, capture, plan.device)


def load_inputs(
    source: str, family: Family, max_length: int, dtype: torch.dtype = torch.float32
) -> TextInputs | ImageInputs:
    """How documents become this model's inputs: its tokenizer, or its image processor (no weights read)."""
    preprocessor = load_preprocessor(source, vision=family.vision)
    if not family.vision:
        return TextInputs(preprocessor, max_length)
    from transformers import AutoConfig

    path = resolve_source(source)
    config = AutoConfig.from_pretrained(path)
    return ImageInputs(preprocessor, config, dtype, (path / "preprocessor_config.json").is_file())


def extract_shard(
    loaded: LoadedModel,
    plan: ExtractionPlan,
    shard: int,
    docs: list[tuple[int, Any]],
    *,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Extract shard ``shard`` (its ``(doc_id, document)`` pairs) into the plan's store; commit it atomically.

    ``on_batch(n_docs, n_tokens)`` is called after each batch. Returns the shard's info.
    """
    info = plan.info
    writer = ShardWriter(
        plan.out, shard, plan.layers, info.n_heads, info.head_dim, info.n_kv_heads, loaded.inputs.token_schema
    )
    try:
        for batch in loaded.inputs.batches(docs, plan.batch_size, plan.bucket):
            batch = batch.to(loaded.device)
            loaded.capture.run(loaded.model, **batch.inputs)
            queries, keys = loaded.capture.gathered(batch.real)
            writer.add_documents(batch.documents())
            writer.write_batch(batch.token_rows(), queries, keys)
            if on_batch is not None:
                on_batch(batch.n_docs, int(batch.real.sum()))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def extract(
    model: str = DEFAULT_MODEL,
    corpus: str | Path = "auto",
    out: str | Path = "store",
    *,
    progress: bool = True,
    **options: Any,
) -> Store:
    """Extract the queries and keys of ``model`` over ``corpus`` into the store ``out``.

    Options: ``max_length`` (128), ``batch_size`` (64), ``limit_docs``, ``layers`` ("0,2-4" or a
    list), ``docs_per_shard`` (1024), ``device`` ("auto"), ``dtype`` ("auto"), ``bucket`` (True:
    batch documents of similar length). An existing store made with the same settings is
    resumed: committed shards are kept, the others are extracted.
    """
    plan = plan_extraction(model, corpus, out, **options)
    existing = read_manifest(plan.out)
    if existing is not None and existing["complete"]:
        return Store(plan.out)  # same settings (checked by the plan) and nothing left to do
    loaded = LoadedModel.load(plan)
    store = start_store(plan, loaded.inputs)
    done = set(store.committed_shards())
    bar = _progress_bar(plan.n_docs, sum(store.shard_info(s)["n_docs"] for s in done), progress)
    tokens, started = 0, time.perf_counter()

    def on_batch(n_docs: int, n_tokens: int) -> None:
        nonlocal tokens
        tokens += n_tokens
        bar.update(n_docs)
        bar.set_postfix_str(f"{tokens / (time.perf_counter() - started):,.0f} tokens/s", refresh=False)

    try:
        for shard, docs in enumerate(shards(plan.documents(), plan.docs_per_shard)):
            if shard in done:
                continue
            extract_shard(loaded, plan, shard, docs, on_batch=on_batch)
    finally:
        bar.close()
        loaded.capture.remove()
    return finish_store(plan)


def start_store(plan: ExtractionPlan, inputs: ModelInputs) -> Store:
    """Create the store folder and its manifest (kept if the store is being resumed); clear temps.

    The score scales and windows are read from the model built without weights, so that a job's
    coordinator need not load the model that its workers run.
    """
    existing = read_manifest(plan.out)
    plan.out.mkdir(parents=True, exist_ok=True)
    remove_temps(plan.out)
    if existing is None:
        skeleton = weightless_model(plan.info.source)
        info = plan.info
        manifest = {
            "format": layout.FORMAT,
            "format_version": layout.FORMAT_VERSION,
            "qkscale_version": __version__,
            **plan.identity,
            "score_scale": score_scales(skeleton, plan.family, info.n_layers, info.head_dim),
            "attention_window": attention_windows(skeleton, plan.family, info.n_layers),
            "modality": plan.modality,
            "preprocessing": inputs.describe(),
            "n_docs": plan.n_docs,
            "n_shards": plan.n_shards,
            "complete": False,
            "device": plan.device,
        }
        write_json_atomic(plan.out / layout.MANIFEST, manifest)
    (plan.out / layout.SHARDS).mkdir(exist_ok=True)
    remove_temps(plan.out / layout.SHARDS)
    return Store(plan.out)


def finish_store(plan: ExtractionPlan) -> Store:
    """Mark the store complete once every shard is committed, with its totals; returns it."""
    store = Store(plan.out)
    missing = [s for s in range(plan.n_shards) if s not in set(store.committed_shards())]
    if missing:
        raise StoreError(f"store {plan.out} still lacks {len(missing)} shard(s), first {missing[0]}")
    infos = [store.shard_info(s) for s in range(plan.n_shards)]
    manifest = read_manifest(plan.out)
    manifest.update(
        complete=True,
        n_tokens=sum(i["n_tokens"] for i in infos),
        truncated_docs=sum(i["truncated_docs"] for i in infos),
    )
    write_json_atomic(plan.out / layout.MANIFEST, manifest)
    return Store(plan.out)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="doc", desc="extract", disable=not enabled, dynamic_ncols=True)
