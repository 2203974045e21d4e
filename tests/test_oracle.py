"""The truth oracle: attention recomputed from the stored Q/K equals the model's own attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MAX_LENGTH, SENTENCES
from transformers import AutoModel, AutoTokenizer

from qkscale.models.loader import resolve_source

FAMILIES = ["minilm", "gpt2", "roberta", "distilbert", "llama", "mistral", "qwen2"]
DECODERS = ("gpt2", "llama", "mistral", "qwen2")


def _eager_attentions(source: str) -> tuple[list[torch.Tensor], list[int]]:
    """The model's own eager attention for SENTENCES in one right-padded batch, and each length."""
    path = resolve_source(source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = tokenizer(SENTENCES, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    return [a.float() for a in out.attentions], batch["attention_mask"].sum(1).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_from_store_equals_model_attention(family, sentence_stores, model_sources):
    _assert_store_matches_model(sentence_stores[family], model_sources[family], family)


def _assert_store_matches_model(store, source: str, family: str) -> None:
    attentions, lengths = _eager_attentions(source)
    assert len(attentions) == store.n_layers == len(store.layers)
    assert max(lengths) == MAX_LENGTH and min(lengths) < MAX_LENGTH / 2  # truncation and padding both occur
    worst = uniform_gap = 0.0
    for doc, length in enumerate(lengths):
        for layer in store.layers:
            for head in range(store.n_heads):
                ours = store.attention(doc, layer, head)
                theirs = attentions[layer][doc, head, :length, :length].numpy()
                assert ours.shape == (length, length)
                worst = max(worst, float(np.abs(ours - theirs).max()))
                uniform_gap = max(uniform_gap, float(np.abs(_uniform_like(ours, store.causal) - theirs).max()))
    assert worst < 2e-3, f"{family}: max |attention difference| {worst:.2e}"
    assert uniform_gap > 50 * 2e-3, f"{family}: attention too flat for the oracle to discriminate"


def _uniform_like(attention: np.ndarray, causal: bool) -> np.ndarray:
    """What a model attending evenly to every visible token would give: the oracle must reject it."""
    visible = np.tril(np.ones_like(attention)) if causal else np.ones_like(attention)
    return visible / visible.sum(axis=1, keepdims=True)


def test_gpt2_attention_is_causal(sentence_stores):
    attention = sentence_stores["gpt2"].attention(1, 0, 0)
    assert np.all(np.triu(attention, k=1) == 0)
    np.testing.assert_allclose(attention.sum(axis=1), 1, rtol=1e-5)


def test_manifest_records_each_family(sentence_stores):
    for family, store in sentence_stores.items():
        model = store.manifest["model"]
        assert model["causal"] is (family in DECODERS)
        assert store.head_dim * store.n_heads == {"minilm": 384, "roberta": 48, "distilbert": 48}.get(family, 64)
        assert len(store.manifest["score_scale"]) == store.n_layers
    scales = sentence_stores["gpt2"].manifest["score_scale"]
    assert scales == pytest.approx([16**-0.5 / (layer + 1) for layer in range(3)])


def test_grouped_query_heads_share_their_keys(sentence_stores):
    store = sentence_stores["llama"]
    assert (store.n_heads, store.n_kv_heads) == (4, 2) and store.manifest["model"]["n_kv_heads"] == 2
    assert [store.kv_head(h) for h in range(4)] == [0, 0, 1, 1]
    np.testing.assert_array_equal(store.keys(1, 0), store.keys(1, 1))
    assert not np.array_equal(store.keys(1, 1), store.keys(1, 2))
    assert not np.array_equal(store.queries(1, 0), store.queries(1, 1))


def test_sliding_windows_are_recorded_and_applied(sentence_stores):
    assert sentence_stores["llama"].manifest["attention_window"] == [None, None, None]
    assert sentence_stores["mistral"].manifest["attention_window"] == [8, 8, 8]
    assert sentence_stores["qwen2"].manifest["attention_window"] == [None, 6, 6]
    attention = sentence_stores["mistral"].attention(3, 2, 1)  # a long sentence: the window cuts it
    assert attention.shape[0] > 8
    assert np.all(np.tril(attention, k=-8) == 0) and np.all(np.triu(attention, k=1) == 0)


@pytest.fixture(scope="module")
def electra(tmp_path_factory) -> str:
    """ELECTRA: an architecture no adapter knows (BERT-like attention under another model type)."""
    from conftest import _save_tiny_encoder

    folder = _save_tiny_encoder(tmp_path_factory.mktemp("electra"), "electra")
    return str(folder)


GENERIC = [
    "--q-module",
    "encoder.layer.{layer}.attention.self.query",
    "--k-module",
    "encoder.layer.{layer}.attention.self.key",
]


def test_generic_adapter_is_exact(electra, sentences_file, tmp_path, run_cli):
    code, _, err = run_cli(
        "extract",
        "--model",
        electra,
        "--corpus",
        sentences_file,
        "--out",
        tmp_path / "s",
        "--max-length",
        MAX_LENGTH,
        "--batch-size",
        4,
        *GENERIC,
    )
    assert code == 0, err
    from qkscale import open_store

    store = open_store(tmp_path / "s")
    assert store.manifest["model"]["family"] == "generic"
    assert store.manifest["model"]["q_module"] == GENERIC[1]
    _assert_store_matches_model(store, electra, "generic")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            "unsupported architecture 'electra'; supported: bert, deit, dinov2, dinov2_with_registers, distilbert, "
            "gpt2, llama, mistral, qwen2, roberta, vit; or name its projections with --q-module/--k-module",
        ),
        (GENERIC[:2], "the generic adapter needs both --q-module and --k-module"),
        (["--q-module", "encoder.layer.0.attention.self.query", *GENERIC[2:]], "--q-module 'encoder.layer.0."),
        (
            ["--q-module", "encoder.layer.{layer}.attention.self.quer", *GENERIC[2:]],
            "--q-module: the model has no module 'encoder.layer.0.attention.self.quer'",
        ),
        ([*GENERIC, "--head-dim", "8"], "gives 48 features, not heads x head size = 3 x 8"),
    ],
)
def test_generic_adapter_errors(args, message, electra, sentences_file, tmp_path, run_cli):
    code, _, err = run_cli("extract", "--model", electra, "--corpus", sentences_file, "--out", tmp_path / "s", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()
