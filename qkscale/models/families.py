"""Architecture families, declared as data: where each model keeps its query and key projections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """How to find the q/k projections of one architecture family.

    ``attention`` is the path of a layer's attention module relative to the base model
    (``AutoModel``), with ``{layer}`` for the layer index. Either ``query`` and ``key`` name its
    separate projection modules, or ``fused_qkv`` names one module whose output is ``[q | k | v]``,
    or ``after_rotary`` says that q and k are taken where the model hands them to its attention
    function: after the rotary embedding, keys per key/value head (grouped-query attention).
    ``window_config`` names the config field of a sliding window that applies to every layer;
    a per-layer window is read from the attention module's own ``sliding_window``.
    Several families may serve one model type (module paths that changed across transformers
    releases): the first whose layer-0 attention module exists is used.
    """

    name: str
    model_types: tuple[str, ...]
    attention: str
    query: str | None = None
    key: str | None = None
    fused_qkv: str | None = None
    causal: bool = False
    positions_after_padding: bool = False  # RoBERTa: position ids start at pad_token_id + 1
    after_rotary: bool = False
    window_config: str | None = None
    vision: bool = False  # reads images (pixel_values), not text


_BERT_ATTENTION = "encoder.layer.{layer}.attention.self"
_DINOV2_TYPES = ("dinov2", "dinov2_with_registers")

FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), _BERT_ATTENTION, "query", "key"),
    Family("roberta", ("roberta",), _BERT_ATTENTION, "query", "key", positions_after_padding=True),
    Family("distilbert", ("distilbert",), "transformer.layer.{layer}.attention", "q_lin", "k_lin"),
    Family("gpt2", ("gpt2",), "h.{layer}.attn", fused_qkv="c_attn", causal=True),
    Family("llama", ("llama", "qwen2"), "layers.{layer}.self_attn", causal=True, after_rotary=True),
    # Vision transformers: transformers >= 5.x names (q_proj/k_proj), then the older ones.
    Family("vit", ("vit", "deit"), "layers.{layer}.attention", "q_proj", "k_proj", vision=True),
    Family("vit", ("vit", "deit"), "encoder.layer.{layer}.attention.attention", "query", "key", vision=True),
    Family("dinov2", _DINOV2_TYPES, "encoder.layer.{layer}.attention", "q_proj", "k_proj", vision=True),
    Family("dinov2", _DINOV2_TYPES, "encoder.layer.{layer}.attention.attention", "query", "key", vision=True),
    Family(
        "mistral",
        ("mistral",),
        "layers.{layer}.self_attn",
        causal=True,
        after_rotary=True,
        window_config="sliding_window",
    ),
)

FAMILIES_BY_MODEL_TYPE: dict[str, tuple[Family, ...]] = {
    t: tuple(f for f in FAMILIES if t in f.model_types) for f in FAMILIES for t in f.model_types
}


def generic_family(q_module: str, k_module: str, causal: bool = False) -> Family:
    """A family for an architecture no adapter knows, from the full paths of its q and k projections.

    The paths are relative to the base model and hold ``{layer}``, for example
    ``encoder.layer.{layer}.attention.self.query``.
    """
    from qkscale.errors import OptionError

    for flag, pattern in (("--q-module", q_module), ("--k-module", k_module)):
        if "{layer}" not in pattern:
            raise OptionError(
                f"{flag} '{pattern}' must contain {{layer}}, e.g. encoder.layer.{{layer}}.attention.self.query"
            )
    return Family("generic", (), attention="", query=q_module, key=k_module, causal=causal)


def supported_model_types() -> list[str]:
    """The Hugging Face ``model_type`` values that an adapter knows."""
    return sorted(FAMILIES_BY_MODEL_TYPE)
