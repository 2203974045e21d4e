"""Shared fixtures. Session-scoped ones are expensive and read-only: tests must not mutate them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Sentences of very different lengths, so that batches are padded; the last one is truncated.
SENTENCES = [
    "Attention is all you need.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "Short.",
    "Queries and keys live in the same space, so a query lands near the keys it attends to, "
    "and a joint embedding shows which tokens each attention head looks at in its layer.",
    "Tokens, tokens everywhere!",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four "
    "twenty-five twenty-six twenty-seven twenty-eight twenty-nine thirty thirty-one thirty-two.",
]
MAX_LENGTH = 40


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Random weights this large give peaked attention, so that the oracle can tell heads apart.
INITIALIZER_RANGE = 0.2


def _bpe_tokenizer(special_tokens: bool = True):
    """A byte-level BPE tokenizer trained on builtin prose (no pad, eos, bos or unk without ``special_tokens``)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    from qkscale.corpus.builtin import builtin_sentences

    bpe = ByteLevelBPETokenizer()
    end = ["<|endoftext|>"] if special_tokens else []
    bpe.train_from_iterator(builtin_sentences()[:3000], vocab_size=600, special_tokens=end)
    names = dict.fromkeys(("eos_token", "bos_token", "unk_token"), end[0] if end else None)
    return GPT2TokenizerFast(tokenizer_object=bpe, **names)


def _save_tiny_gpt2(folder: Path, special_tokens: bool = True) -> Path:
    """A randomly initialised GPT-2 with a byte-level BPE tokenizer trained on builtin prose."""
    from transformers import AutoModel, GPT2Config

    tokenizer = _bpe_tokenizer(special_tokens)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=3,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=INITIALIZER_RANGE,
        scale_attn_by_inverse_layer_idx=True,  # per-layer score scales: the oracle checks them too
    )
    _save(AutoModel.from_config(config), tokenizer, folder)
    return folder


# LLaMA-style decoders: rotary embeddings, grouped-query attention (4 query heads share 2 key/value
# heads) and, for Mistral and Qwen2, sliding windows shorter than the test sentences.
_DECODER_OPTIONS = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
}


def _save_tiny_decoder(folder: Path, model_type: str) -> Path:
    """A randomly initialised LLaMA, Mistral or Qwen2 with the byte-level BPE tokenizer."""
    from transformers import AutoConfig, AutoModel

    tokenizer = _bpe_tokenizer()
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_DECODER_OPTIONS[model_type],
    )
    _save(AutoModel.from_config(config), tokenizer, folder)
    return folder


def _save_tiny_encoder(folder: Path, model_type: str) -> Path:
    """A randomly initialised RoBERTa, DistilBERT or ELECTRA using MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from qkscale.models.loader import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    feed_forward = {"roberta": "intermediate_size", "distilbert": "hidden_dim", "electra": "intermediate_size"}[
        model_type
    ]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=tokenizer.vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=130,  # RoBERTa's positions start after the padding index
        initializer_range=INITIALIZER_RANGE,
        **{feed_forward: 96},
        **({"embedding_size": 32} if model_type == "electra" else {}),  # ELECTRA projects its embeddings
    )
    _save(AutoModel.from_config(config), tokenizer, folder)
    return folder


def _save(model, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


IMAGE_SIZE, PATCH = 32, 8


def save_tiny_vision(folder: Path, model_type: str, with_processor: bool) -> Path:
    """A randomly initialised vision transformer; its image processor saved beside it or not."""
    import torch
    from transformers import AutoConfig, AutoModel, ViTImageProcessor

    extra = {"num_register_tokens": 2} if model_type == "dinov2_with_registers" else {}
    config = AutoConfig.for_model(
        model_type,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        initializer_range=INITIALIZER_RANGE,
        **extra,
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    if with_processor:
        size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ViTImageProcessor(size=size, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(
            folder
        )
    return folder


@pytest.fixture(scope="session")
def sentences_file(tmp_path_factory) -> Path:
    return _write_lines(tmp_path_factory.mktemp("corpus") / "sentences.txt", SENTENCES)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2": _save_tiny_gpt2(root / "gpt2"),
        "roberta": _save_tiny_encoder(root / "roberta", "roberta"),
        "distilbert": _save_tiny_encoder(root / "distilbert", "distilbert"),
        **{name: _save_tiny_decoder(root / name, name) for name in _DECODER_OPTIONS},
    }


@pytest.fixture(scope="session")
def model_sources(tiny_models) -> dict[str, str]:
    """Every supported family: the real MiniLM and small random models."""
    return {"minilm": "minilm", **{name: str(path) for name, path in tiny_models.items()}}


@pytest.fixture(scope="session")
def sentence_stores(tmp_path_factory, sentences_file, model_sources) -> dict:
    """One store per model over SENTENCES, batch size 4 (padding), 2 docs per shard."""
    import qkscale

    root = tmp_path_factory.mktemp("stores")
    return {
        name: qkscale.extract(
            source, sentences_file, root / name, max_length=MAX_LENGTH, batch_size=4, docs_per_shard=4, progress=False
        )
        for name, source in model_sources.items()
    }


@pytest.fixture(scope="session")
def builtin_store(tmp_path_factory):
    """MiniLM over the first 60 builtin documents, in 3 shards."""
    import qkscale

    return qkscale.extract(
        out=tmp_path_factory.mktemp("builtin") / "store",
        limit_docs=60,
        docs_per_shard=25,
        batch_size=16,
        progress=False,
    )


@pytest.fixture(scope="session")
def dashboard_store(tmp_path_factory):
    """MiniLM over 40 builtin documents, every head projected by PCA, layer 1 by UMAP too, with metrics."""
    import qkscale
    from qkscale.metrics import compute_metrics
    from qkscale.project import project

    store = qkscale.extract(
        out=tmp_path_factory.mktemp("dashboard") / "store", limit_docs=40, docs_per_shard=20, progress=False
    )
    project(store, method="pca", progress=False)
    project(store, method="umap", layers=[1], heads=[0, 1], sample=400, progress=False)
    compute_metrics(store, progress=False)
    return store


@pytest.fixture
def run_cli(capsys):
    """Run the real `qkscale` entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from qkscale.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        old = sys.argv
        sys.argv = ["qkscale", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = old
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return _free_port()


def start_dask(local_directory: Path) -> tuple[str, list[subprocess.Popen]]:
    """A separately started `dask scheduler` and `dask worker` (2 processes) on 127.0.0.1: address, processes."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "start_new_session": True}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet
    )
    workers = subprocess.Popen(
        [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--local-directory",
         str(local_directory)],
        **quiet,
    )  # fmt: skip
    return address, [workers, scheduler]


def kill_dask(processes: list[subprocess.Popen]) -> None:
    """SIGKILL the scheduler, the worker and every process they started (each has its own session)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stop_dask(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def dask_processes(tmp_path):
    """The address of a `dask scheduler` with a `dask worker` of 2 processes, started for the test."""
    address, processes = start_dask(tmp_path / "dask")
    try:
        yield address
    finally:
        stop_dask(processes)
