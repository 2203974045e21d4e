"""Attention recomputed from queries and keys: softmax(scale * q·k) with the model's mask."""

from __future__ import annotations

import numpy as np


def attention_weights(
    q: np.ndarray, k: np.ndarray, scale: float, causal: bool, window: int | None = None
) -> np.ndarray:
    """``[..., T, T]`` attention of queries ``[..., T, D]`` on keys ``[..., T, D]`` (float32).

    ``causal`` hides later keys; a sliding ``window`` also hides keys ``window`` or more tokens back.
    """
    scores = np.matmul(q.astype(np.float32), np.swapaxes(k.astype(np.float32), -1, -2)) * np.float32(scale)
    t = scores.shape[-1]
    if causal:
        scores[..., np.triu(np.ones((t, t), bool), k=1)] = -np.inf
    if window:
        scores[..., np.tril(np.ones((t, t), bool), k=-window)] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights
