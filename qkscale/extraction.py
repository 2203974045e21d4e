"""The extract stage: run a model over a corpus and store every requested head's Q and K.

:func:`plan_extraction` checks every input (model config, layers, corpus, output folder) before
anything is written, and records where each shard starts in the corpus; :class:`ExtractStage`'s
unit is one shard: it reads its own documents and commits one shard folder (:func:`extract_shard`).
:func:`extract` runs the stage in this process; a job runs the same stage on a Dask cluster.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from qkscale import __version__
from qkscale.corpus import (
    BUILTIN,
    BUILTIN_IMAGES,
    Corpus,
    CorpusIndex,
    ImageCorpus,
    open_corpus,
    open_image_corpus,
    shards,
)
from qkscale.engine import QUIET, Progress, Stage, run_stage
from qkscale.errors import CorpusError, OptionError, QKScaleWarning, StoreError
from qkscale.models import Family, ModelInfo, QKCapture, inspect_model, load_model, score_scales
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
from qkscale.options import api_signature, from_keywords
from qkscale.selection import parse_selection
from qkscale.stage_options import DEFAULT_MODEL, ExtractOptions
from qkscale.store import ShardWriter, Store, create_store, dtypes, finish_store, layout, read_manifest
from qkscale.store.damaged import set_aside, uncommitted_shard_folders
from qkscale.store.files import TEMP
from qkscale.store.lock import LOCK
from qkscale.store.manifest import missing_shards

# Fields of the manifest that must match for an existing store to be resumed.
_IDENTITY = ("model", "layers", "heads", "store_dtype", "corpus", "options")  # heads: only when not all
# What a manifest written before a field existed means by its absence.
_ABSENT = {"store_dtype": dtypes.DEFAULT}
# Options that change the stored rows (batches decide the row order within a shard).
_ROW_OPTIONS = ("max_length", "docs_per_shard", "limit_docs", "max_tokens", "batch_size", "bucket", "dtype")


@dataclass
class ExtractionPlan:
    """Everything an extraction needs, checked: nothing has been written yet."""

    options: ExtractOptions
    info: ModelInfo
    family: Family
    layers: list[int]
    heads: list[int]  # query heads stored in every layer
    corpus: Corpus | ImageCorpus
    index: CorpusIndex  # where each shard starts in the corpus
    out: Path
    limit_docs: int | None  # from --limit-docs, or from --max-tokens
    device: str
    dtype: str
    identity: dict[str, Any]

    @property
    def n_docs(self) -> int:
        return self.index.n_docs

    @property
    def n_shards(self) -> int:
        return self.index.n_shards

    @property
    def modality(self) -> str:
        return self.corpus.modality

    def documents(self) -> Iterator[Any]:
        return islice(self.corpus.documents(), self.limit_docs)

    def shard_documents(self, shard: int) -> list[tuple[int, Any]]:
        """The ``(doc_id, document)`` pairs of ``shard``, read from the corpus where the shard starts."""
        return self.corpus.read_shard(self.index, shard)

    def shard_span(self, shard: int) -> tuple[int, int]:
        """First and last document id of ``shard``."""
        docs = self.index.shard_docs(shard)
        return docs.start, docs.stop - 1


def plan_extraction(
    model: str = DEFAULT_MODEL,
    corpus: str | Path = "auto",
    out: str | Path = "store",
    *,
    check_device: bool = True,
    **options: Any,
) -> ExtractionPlan:
    """Validate every input, cheapest first; raise a :class:`QKScaleError` on the first bad one.

    ``options`` are the fields of :class:`ExtractOptions`. ``max_tokens`` keeps the first
    documents that hold at most that many tokens (it reads the corpus through the tokenizer
    once). ``check_device=False`` takes ``device`` as given: a job's workers will run the model.
    """
    chosen = from_keywords(ExtractOptions, {"model": model, "corpus": str(corpus), **options})
    if chosen.max_tokens is not None and chosen.limit_docs is not None:
        raise OptionError("give --max-tokens or --limit-docs, not both")
    device = resolve_device(chosen.device) if check_device else chosen.device
    dtype = resolve_dtype(chosen.dtype, device)
    info, family = inspect_model(
        chosen.model, chosen.q_module, chosen.k_module, chosen.n_heads, chosen.head_dim, chosen.causal
    )
    if info.max_positions and chosen.max_length > info.max_positions:
        raise OptionError(f"--max-length {chosen.max_length} exceeds the model's {info.max_positions} positions")
    layers = parse_selection(chosen.layers, info.n_layers, "layers")
    heads = parse_selection(chosen.heads, info.n_heads, "heads")
    out = Path(out).expanduser()
    _check_out_is_usable(out)
    source = _open_corpus_for(family, chosen.corpus, info.model_type)
    limit_docs = chosen.limit_docs
    if chosen.max_tokens is not None:
        limit_docs = _docs_within(source, load_inputs(info.source, family, chosen.max_length), chosen.max_tokens)
    index = source.index(chosen.docs_per_shard, limit_docs)
    row_options = {name: getattr(chosen, name) for name in _ROW_OPTIONS}
    identity = {
        "model": info.as_dict(),
        "layers": layers,
        **({"heads": heads} if len(heads) < info.n_heads else {}),
        "store_dtype": chosen.store_dtype,
        "corpus": source.describe(),
        "options": {**row_options, "limit_docs": limit_docs, "dtype": dtype},
    }
    _check_resumable(out, identity)
    return ExtractionPlan(chosen, info, family, layers, heads, source, index, out, limit_docs, device, dtype, identity)


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
        all(p.name.startswith(TEMP) or p.name in (layout.JOB, LOCK) for p in out.iterdir()) if out.is_dir() else True
    )
    if not leftovers_only and read_manifest(out) is None:
        raise StoreError(f"--out {out} exists and is not a qkscale store (choose a new or empty folder)")


def _check_resumable(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a store made with other settings, naming the first that differs."""
    manifest = read_manifest(out)
    if manifest is None:
        return
    for key in _IDENTITY:
        theirs, ours = manifest.get(key, _ABSENT.get(key)), identity.get(key)
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
    """A model ready to extract from: loaded once per process (a Dask worker: once per job), reused for every shard."""

    model: Any
    inputs: ModelInputs
    capture: QKCapture
    device: str

    @classmethod
    def load(cls, plan: ExtractionPlan) -> LoadedModel:
        model = load_model(plan.info.source, plan.device, plan.dtype)
        info = plan.info
        inputs = load_inputs(info.source, plan.family, plan.options.max_length, getattr(torch, plan.dtype))
        capture = QKCapture(
            model, plan.family, plan.layers, info.n_heads, info.head_dim, info.n_kv_heads, plan.heads,
            plan.options.store_dtype,
        )  # fmt: skip
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
        plan.out, shard, plan.layers, info.n_heads, info.head_dim, info.n_kv_heads, loaded.inputs.token_schema,
        heads=plan.heads, dtype=plan.options.store_dtype,
    )  # fmt: skip
    try:
        for batch in loaded.inputs.batches(docs, plan.options.batch_size, plan.options.bucket):
            batch = batch.to(loaded.device)
            loaded.capture.run(loaded.model, **batch.inputs)
            documents = batch.documents()
            queries, keys = loaded.capture.gathered(batch.real, [document["doc"] for document in documents])
            writer.add_documents(documents)
            writer.write_batch(batch.token_rows(), queries, keys)
            if on_batch is not None:
                on_batch(batch.n_docs, int(batch.real.sum()))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


class ExtractStage(Stage):
    """One unit per shard: read the shard's documents, run the model, commit the shard folder."""

    name = "extract"
    work_unit = "doc"
    rate_unit = "tokens"
    uses_gpu = True

    def __init__(self, plan: ExtractionPlan):
        self.plan = plan
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan}  # what a worker needs: paths and options, not the loaded model

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["plan"])

    def start(self) -> None:
        start_store(self.plan)
        for shard in uncommitted_shard_folders(self.plan.out, self.plan.n_shards):
            aside = set_aside(self.plan.out, layout.shard_dir(self.plan.out, shard))
            warnings.warn(
                f"shard {shard} has no {layout.SHARD_INFO}: set aside as {aside.relative_to(self.plan.out)}, "
                "extracting it again",
                QKScaleWarning,
                stacklevel=2,
            )

    def temp_folders(self) -> list[Path]:
        return [self.plan.out, self.plan.out / layout.SHARDS]

    def store_path(self) -> Path:
        return self.plan.out

    def units(self) -> list[int]:
        store = Store(self.plan.out)
        return [shard for shard in range(self.plan.n_shards) if not store.is_committed(shard)]

    def describe(self, shard: int) -> str:
        first, last = self.plan.shard_span(shard)
        return f"shard {shard} (documents {first}-{last})"

    def work(self, shard: int) -> int:
        first, last = self.plan.shard_span(shard)
        return last - first + 1

    def work_total(self) -> tuple[int, int]:
        return self.plan.n_docs, self.plan.n_docs - sum(self.work(shard) for shard in self.units())

    def setup(self) -> None:
        self._loaded = LoadedModel.load(self.plan)

    def teardown(self) -> None:
        with self._lock:  # not while a unit runs the model
            if self._loaded is not None:
                self._loaded.capture.remove()
                self._loaded = None

    def run_unit(self, shard: int, progress: Progress = QUIET) -> dict[str, int]:
        """Extract and commit one shard; one already committed (by an earlier try) is left as it is."""
        store = Store(self.plan.out)
        if store.is_committed(shard):
            return store.shard_info(shard)
        docs = self.plan.shard_documents(shard)
        with self._lock:  # one capture per model: a worker's threads take turns on it
            return extract_shard(self._loaded, self.plan, shard, docs, on_batch=progress.advance)

    def count(self, info: dict[str, int]) -> int:
        return info["n_tokens"]

    def empty(self) -> None:
        return None  # the committed shards are the result: nothing is kept per shard

    def combine(self, combined: None, shard: int, info: dict[str, int]) -> None:
        return None

    def finish(self, combined: None) -> Store:
        return finish_store(self.plan.out)

    def summary(self, store: Store, seconds: float) -> str:
        return f"store complete: {self.plan.n_shards} shards, {store.n_tokens:,} tokens ({seconds:,.1f} s this run)"


@api_signature(ExtractOptions)
def extract(
    model: str = DEFAULT_MODEL,
    corpus: str | Path = "auto",
    out: str | Path = "store",
    *,
    progress: bool = True,
    **options: Any,
) -> Store:
    """Extract the queries and keys of ``model`` over ``corpus`` into the store ``out``.

    ``options`` are the fields of :class:`~qkscale.stage_options.ExtractOptions` (the flags of
    ``qkscale extract``). An existing store made with the same settings is resumed: committed
    shards are kept, the others are extracted.
    """
    plan = plan_extraction(model, corpus, out, **options)
    existing = read_manifest(plan.out)
    if existing is not None and existing["complete"] and not missing_shards(plan.out, existing):
        return Store(plan.out)  # same settings (checked by the plan) and nothing left to do
    return run_stage(ExtractStage(plan), progress=progress).value


def start_store(plan: ExtractionPlan) -> Store:
    """Create the store and its manifest (kept if the store is being resumed).

    The score scales and windows are read from the model built without weights, so that a job's
    coordinator need not load the model that its workers run.
    """
    if read_manifest(plan.out) is not None:
        return create_store(plan.out, {})
    skeleton = weightless_model(plan.info.source)
    info = plan.info
    inputs = load_inputs(info.source, plan.family, plan.options.max_length)
    return create_store(
        plan.out,
        {
            "qkscale_version": __version__,
            **plan.identity,
            "score_scale": score_scales(skeleton, plan.family, info.n_layers, info.head_dim),
            "attention_window": attention_windows(skeleton, plan.family, info.n_layers),
            "modality": plan.modality,
            "preprocessing": inputs.describe(),
            "n_docs": plan.n_docs,
            "n_shards": plan.n_shards,
            "device": plan.device,
        },
    )
