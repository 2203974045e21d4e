"""Check a store's manifest: every field a reader relies on, before any reader relies on it.

:func:`manifest_problems` lists what is wrong (``qkscale verify`` prints them all);
:func:`check_manifest` raises a one-line :class:`StoreError` naming the first bad field (what
opening a store does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkscale.errors import StoreError
from qkscale.store import dtypes, layout

MODALITIES = ("text", "image")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _is_int(value) and value > 0


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _indices(value: Any, bound: int) -> bool:
    """A non-empty list of distinct increasing integers in ``[0, bound)``."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(_is_int(v) and 0 <= v < bound for v in value)
        and all(a < b for a, b in zip(value, value[1:], strict=False))
    )


def _per_layer(value: Any, n_layers: int, item: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and len(value) == n_layers and all(item(v) for v in value)


def _scale(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _field(manifest: dict[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def manifest_problems(manifest: Any) -> list[str]:
    """What is wrong with ``manifest`` (a parsed ``manifest.json``), one line per bad field; [] if nothing."""
    if not isinstance(manifest, dict) or manifest.get("format") != layout.FORMAT:
        return [f"{layout.MANIFEST} is not a qkscale store's manifest (no format: {layout.FORMAT})"]
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        return [f"field 'format_version' must be a positive integer, not {version!r}"]
    if version > layout.FORMAT_VERSION:
        return [
            f"field 'format_version' is {version}: the store was made by a newer qkscale "
            f"(this one reads version {layout.FORMAT_VERSION}); upgrade qkscale"
        ]
    problems: list[str] = []

    def need(name: str, ok: bool, what: str) -> None:
        if not ok:
            found = repr(_field(manifest, name))
            problems.append(f"field '{name}' must be {what}, not {found if len(found) <= 60 else found[:57] + '...'}")

    if not isinstance(manifest.get("model"), dict):
        return ["field 'model' must be an object with the model's shape"]
    for name in ("n_layers", "n_heads", "head_dim"):
        need(f"model.{name}", _positive(_field(manifest, f"model.{name}")), "a positive integer")
    if problems:
        return problems
    n_layers, n_heads = manifest["model"]["n_layers"], manifest["model"]["n_heads"]
    kv = manifest["model"].get("n_kv_heads", n_heads)
    need("model.n_kv_heads", _positive(kv) and n_heads % kv == 0, f"a positive integer dividing n_heads ({n_heads})")
    need("model.causal", isinstance(_field(manifest, "model.causal"), bool), "true or false")
    need("model.source", isinstance(_field(manifest, "model.source"), str), "a string")
    need("layers", _indices(manifest.get("layers"), n_layers), f"increasing layer numbers below {n_layers}")
    if "heads" in manifest:
        need("heads", _indices(manifest["heads"], n_heads), f"increasing head numbers below {n_heads}")
    need(
        "score_scale",
        _per_layer(manifest.get("score_scale"), n_layers, _scale),
        f"a list of {n_layers} positive numbers (one per layer)",
    )
    windows = manifest.get("attention_window")
    need(
        "attention_window",
        windows is None or _per_layer(windows, n_layers, lambda w: w is None or _positive(w)),
        f"null or a list of {n_layers} window sizes or nulls (one per layer)",
    )
    need("n_shards", _count(manifest.get("n_shards")), "a non-negative integer")
    need("n_docs", _count(manifest.get("n_docs")), "a non-negative integer")
    need("complete", isinstance(manifest.get("complete"), bool), "true or false")
    need(
        "store_dtype", manifest.get("store_dtype", dtypes.DEFAULT) in dtypes.NAMES, f"one of {', '.join(dtypes.NAMES)}"
    )
    need("modality", manifest.get("modality", "text") in MODALITIES, f"one of {', '.join(MODALITIES)}")
    need("corpus.spec", isinstance(_field(manifest, "corpus.spec"), str), "the corpus it was made from")
    need("options.max_length", _positive(_field(manifest, "options.max_length")), "a positive integer")
    if manifest.get("complete") is True:
        need("n_tokens", _count(manifest.get("n_tokens")), "the number of tokens of a complete store")
    return problems


def missing_shards(root: Path, manifest: dict[str, Any]) -> list[int]:
    """Planned shards that are not committed (no ``shard.json``): O(shards) file checks."""
    return [s for s in range(manifest["n_shards"]) if not (layout.shard_dir(root, s) / layout.SHARD_INFO).is_file()]


def check_manifest(root: Path, manifest: Any) -> None:
    """Raise a one-line :class:`StoreError` naming the first bad field, or a ``complete`` store's missing shard."""
    problems = manifest_problems(manifest)
    if problems:
        raise StoreError(f"store {root} has a bad {layout.MANIFEST}: {problems[0]}")
    if manifest["complete"]:
        missing = missing_shards(root, manifest)
        if missing:
            raise StoreError(
                f"store {root} says it is complete but lacks {len(missing)} shard(s), first {missing[0]}; "
                f"run `qkscale verify {root} --repair`"
            )
