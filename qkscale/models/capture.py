"""Capture queries and keys from a model's own projection modules with forward hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from qkscale.models.families import Family


class _StopForward(Exception):
    """Raised by a hook once every requested layer is captured, to skip the remaining layers."""


class QKCapture:
    """Forward hooks that record ``[batch, tokens, heads, head_dim]`` queries and keys per layer.

    Use :meth:`run` to do one forward pass; it stops the model after the last requested layer.
    """

    def __init__(self, model: nn.Module, family: Family, layers: Sequence[int], n_heads: int, head_dim: int):
        self.layers = list(layers)
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.queries: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self._last_layer = max(self.layers)
        self._handles = []
        for layer in self.layers:
            attention = model.get_submodule(family.attention.format(layer=layer))
            if family.fused_qkv:
                self._hook(attention.get_submodule(family.fused_qkv), layer, "qk")
            else:
                self._hook(attention.get_submodule(family.query), layer, "q")
                self._hook(attention.get_submodule(family.key), layer, "k")

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

    @torch.inference_mode()
    def run(self, model: nn.Module, **inputs: torch.Tensor) -> None:
        """One forward pass that fills :attr:`queries` and :attr:`keys` for every requested layer."""
        self.queries.clear()
        self.keys.clear()
        with contextlib.suppress(_StopForward):
            model(**inputs)

    def gathered(self, real: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Queries and keys of the tokens where ``real`` ([batch, tokens] bool) is set.

        Returns two float16 arrays ``[layers, heads, n_real_tokens, head_dim]`` (the on-disk order).
        """
        return self._gather(self.queries, real), self._gather(self.keys, real)

    def _gather(self, captured: dict[int, torch.Tensor], real: torch.Tensor) -> np.ndarray:
        n_real = int(real.sum())
        out = torch.empty(
            (len(self.layers), self.n_heads, n_real, self.head_dim), dtype=torch.float16, device=real.device
        )
        for index, layer in enumerate(self.layers):
            out[index].copy_(captured[layer][real].transpose(0, 1))  # [tokens, heads, d] -> [heads, tokens, d]
        return out.cpu().numpy()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
