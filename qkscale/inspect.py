"""A summary of a store, for `qkscale inspect`."""

from __future__ import annotations

from typing import Any

from qkscale.selection import format_selection
from qkscale.store import Store


def summarize(store: Store) -> dict[str, Any]:
    """Model, shape, sizes and completeness of ``store`` as plain data."""
    manifest = store.manifest
    shards = store.committed_shards()
    infos = [store.shard_info(s) for s in shards]
    model = manifest["model"]
    return {
        "store": str(store.path),
        "model": model["source"],
        "model_type": model["model_type"],
        "layers": format_selection(store.layers),
        "heads": format_selection(store.heads),
        "n_layers": store.n_layers,
        "n_heads": store.n_heads,
        "head_dim": store.head_dim,
        "corpus": manifest["corpus"]["spec"],
        "modality": store.modality,
        "preprocessing": store.preprocessing,
        "max_length": manifest["options"]["max_length"],
        "documents": sum(i["n_docs"] for i in infos),
        "documents_planned": manifest["n_docs"],
        "truncated_documents": sum(i["truncated_docs"] for i in infos),
        "tokens": sum(i["n_tokens"] for i in infos),
        "shards_done": len(shards),
        "shards": manifest["n_shards"],
        "bytes": store.bytes_on_disk(),
        "complete": len(shards) == manifest["n_shards"],
        "projections": {key: [list(h) for h in heads] for key, heads in store.projections().items()},
        "metrics": store.has_metrics,
    }


def format_heads(heads: list[list[int]]) -> str:
    """``[[0, 0], [0, 1], [2, 5]]`` as ``L0 H0-1; L2 H5``."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return "; ".join(f"L{layer} H{format_selection(h)}" for layer, h in by_layer.items())


def format_summary(s: dict[str, Any]) -> str:
    """The summary as aligned text lines."""
    status = (
        "complete"
        if s["complete"]
        else (f"INCOMPLETE ({s['shards_done']}/{s['shards']} shards): rerun the same `qkscale extract` to resume")
    )
    if s["modality"] == "image":
        grid = s["preprocessing"].get("grid", ["?", "?"])
        prefix = " + ".join(s["preprocessing"].get("prefix_tokens", []))
        documents = f"{s['documents']:,} images of {s['documents_planned']:,} ({prefix} + {grid[0]}x{grid[1]} patches)"
    else:
        documents = (
            f"{s['documents']:,} of {s['documents_planned']:,} "
            f"({s['truncated_documents']:,} truncated at {s['max_length']} tokens)"
        )
    rows = [
        ("store", s["store"]),
        ("model", f"{s['model']} ({s['model_type']})"),
        (
            "heads",
            f"{s['n_layers']} layers x {s['n_heads']} heads x {s['head_dim']} dims; "
            f"stored layers {s['layers']}, heads {s['heads']}",
        ),
        ("corpus", s["corpus"]),
        ("documents", documents),
        ("tokens", f"{s['tokens']:,}"),
        ("shards", f"{s['shards_done']}/{s['shards']}"),
        ("on disk", f"{s['bytes'] / 2**20:,.1f} MiB"),
        ("status", status),
        ("metrics", "computed" if s["metrics"] else "not computed (qkscale metrics)"),
    ]
    for key, heads in s["projections"].items():
        rows.append(("projection", f"{key}: {len(heads)} heads ({format_heads(heads)})"))
    return "\n".join(f"{name:<10} {value}" for name, value in rows)
