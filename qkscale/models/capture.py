"""Capture queries and keys from a model's own modules: projection hooks, or its attention function.

Most families expose q and k as outputs of projection modules, caught by forward hooks. Rotary
models (LLaMA-style) rotate q and k inside the attention module, so those are caught where the
model hands them to its attention function: a registered function records them, then runs
PyTorch's SDPA attention exactly as the model would.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from qkscale.errors import ModelError, NonFiniteError
from qkscale.models.families import Family
from qkscale.store.layout import stored_heads


def _to_numpy(values: torch.Tensor) -> np.ndarray:
    """A gathered tensor on the CPU as numpy (bfloat16, which numpy lacks, as its ``uint16`` bits)."""
    if values.dtype == torch.bfloat16:
        return values.view(torch.int16).cpu().numpy().view(np.uint16)
    return values.cpu().numpy()


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured, to skip the remaining layers."""


CAPTURE_ATTENTION = "qkscale_capture"
# Attention modules being captured (by id) -> the function that records their q and k.
_RECORDERS: dict[int, Callable[[torch.Tensor, torch.Tensor], None]] = {}


def _capturing_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, *args, **kwargs):
    """The attention function of a captured model: record q, k ([batch, heads, tokens, d]), then attend."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _RECORDERS.get(id(module))
    if recorder is not None:
        recorder(query, key)
    return sdpa_attention_forward(module, query, key, *args, **kwargs)


def _register_capturing_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_ATTENTION, _capturing_attention)
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


class QKCapture:
    """Forward hooks that record ``[batch, tokens, heads, head_dim]`` queries and keys per layer.

    Use :meth:`run` to do one forward pass; it stops the model after the last requested layer.
    """

    def __init__(
        self,
        model: nn.Module,
        family: Family,
        layers: Sequence[int],
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        heads: Sequence[int] | None = None,
        store_dtype: str = "float16",
    ):
        """``heads``: the query heads to gather (all if None); ``store_dtype``: what :meth:`gathered` gives."""
        self.layers = list(layers)
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim
        self.stored = stored_heads(n_heads, self.n_kv_heads, heads)  # the gathered heads of each kind
        self.store_dtype = store_dtype
        self.queries: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self._last_layer = max(self.layers)
        self._handles = []
        self._model = model
        self._attention_before: str | None = None
        self._recorded: list[int] = []
        if family.after_rotary:
            _register_capturing_attention()
            self._attention_before = model.config._attn_implementation
            model.set_attn_implementation(CAPTURE_ATTENTION)
        for layer in self.layers:
            attention = model.get_submodule(family.attention.format(layer=layer))
            if family.after_rotary:
                _RECORDERS[id(attention)] = self._recorder(layer)
                self._recorded.append(id(attention))
            elif family.fused_qkv:
                self._hook(attention.get_submodule(family.fused_qkv), layer, "qk")
            else:
                self._hook(attention.get_submodule(family.query.format(layer=layer)), layer, "q")
                self._hook(attention.get_submodule(family.key.format(layer=layer)), layer, "k")

    def _hook(self, module: nn.Module, layer: int, kinds: str) -> None:
        """Record ``module``'s output as the given kinds: "q", "k", or "qk" for a fused [q|k|v]."""
        last = self._last_layer
        targets = {"q": self.queries, "k": self.keys}

        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            parts = output.unflatten(-1, (-1, self.n_heads, self.head_dim)).unbind(-3)
            for kind, part in zip(kinds, parts[: len(kinds)], strict=True):
                targets[kind][layer] = part
            if layer == last and layer in self.queries and layer in self.keys:
                raise _StopForward

        self._handles.append(module.register_forward_hook(hook))

    def _recorder(self, layer: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def record(query: torch.Tensor, key: torch.Tensor) -> None:
            self.queries[layer] = query.transpose(1, 2)  # [batch, tokens, heads, d], as the hooks give
            self.keys[layer] = key.transpose(1, 2)  # key/value heads only
            if layer == self._last_layer:
                raise _StopForward

        return record

    @torch.inference_mode()
    def run(self, model: nn.Module, **inputs: torch.Tensor) -> None:
        """One forward pass that fills :attr:`queries` and :attr:`keys` for every requested layer."""
        self.queries.clear()
        self.keys.clear()
        with contextlib.suppress(_StopForward):
            model(**inputs)

    def gathered(self, real: torch.Tensor, docs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Queries and keys of the stored heads at the tokens where ``real`` ([batch, tokens] bool) is set.

        Returns two arrays ``[layers, stored heads, n_real_tokens, head_dim]`` (the on-disk order)
        as the store holds them (:func:`qkscale.store.dtypes.stored_numpy`). One reduction checks
        them; a NaN, an infinity or a value beyond the store dtype's range is a
        :class:`NonFiniteError` naming its layer, head and document (``docs``: the batch's doc ids).
        """
        queries, keys = (self._gather(kind, real) for kind in "qk")
        if not bool(torch.isfinite(queries).all() & torch.isfinite(keys).all()):  # one sync per batch
            kind, gathered = ("q", queries) if not bool(torch.isfinite(queries).all()) else ("k", keys)
            raise self._non_finite(kind, gathered, real, docs)
        return _to_numpy(queries), _to_numpy(keys)

    def _gather(self, kind: str, real: torch.Tensor) -> torch.Tensor:
        captured = self.queries if kind == "q" else self.keys
        heads = self.stored[kind]
        n_real = int(real.sum())
        shape = tuple(captured[self.layers[0]].shape[:2])
        if shape != tuple(real.shape):
            raise ModelError(f"the model attended over {shape[1]} tokens per input where {real.shape[1]} were expected")
        dtype = getattr(torch, self.store_dtype)
        out = torch.empty((len(self.layers), len(heads), n_real, self.head_dim), dtype=dtype, device=real.device)
        index = torch.as_tensor(heads, device=real.device)
        for position, layer in enumerate(self.layers):
            picked = captured[layer][real]  # [tokens, heads, d]
            if len(heads) < picked.shape[1]:
                picked = picked[:, index]
            out[position].copy_(picked.transpose(0, 1))
        return out

    def _non_finite(self, kind: str, gathered: torch.Tensor, real: torch.Tensor, docs: Sequence[int]) -> NonFiniteError:
        """The error naming the first non-finite value of ``gathered`` (located only now that there is one)."""
        bad = ~torch.isfinite(gathered)
        layer_index, head_index, token, dim = (int(i) for i in torch.nonzero(bad)[0])
        layer, head = self.layers[layer_index], self.stored[kind][head_index]
        captured = (self.queries if kind == "q" else self.keys)[layer][real]
        value = float(captured[token, head, dim])  # what the model computed, before the cast to the store dtype
        lengths = real.sum(dim=1).cumsum(0).tolist()
        row = next(r for r, end in enumerate(lengths) if token < end)
        position = token - (lengths[row - 1] if row else 0)
        name = "query" if kind == "q" else "key"
        where = f"a {name} in layer {layer} head {head}, document {docs[row]} (position {position})"
        if math.isfinite(value):
            largest = torch.finfo(gathered.dtype).max
            return NonFiniteError(
                f"{where} is {value:.4g}, beyond {self.store_dtype}'s largest {largest:.6g}: "
                "store this model with --store-dtype float32"
            )
        computed = str(captured.dtype).removeprefix("torch.")
        advice = "check the model's weights" + ("" if computed == "float32" else " or run it with --dtype float32")
        return NonFiniteError(f"{where} is {value} as the model computed it (in {computed}): {advice}")

    def remove(self) -> None:
        """Detach the hooks from the model (and give it back its own attention function)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module_id in self._recorded:
            _RECORDERS.pop(module_id, None)
        self._recorded.clear()
        if self._attention_before is not None:
            self._model.set_attn_implementation(self._attention_before)
            self._attention_before = None
