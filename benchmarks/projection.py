"""Benchmark projection of one head: seconds and trustworthiness per method, size and backend.

For one head of a store (MiniLM, 1M tokens: see the README's benchmark section), at several sizes
in points (queries + keys of the first documents' tokens):

* ``qkscale``: :func:`qkscale.project.run.embed_points` with the default ``--sample`` (a full fit
  where the head has no more points than the sample, else fit on the sample + placement);
* ``full``: the same library fitted on every point (umap-learn, openTSNE, scikit-learn), run
  where a linear lower bound from the previous size says it can end within ``--full-limit``;
* a size that holds the whole head also runs, with the first of ``--backends``, end to end
  through :func:`qkscale.project.project_head` (read the head from the store, normalise, fit,
  place, score, write), as ``qkscale project`` does.

Trustworthiness (k=15) is measured on the same fixed 5k points for every variant of a size, so
differences between variants are differences in the embeddings. Run::

    python -m benchmarks.projection --store /work/bench/minilm-1m --layer 3 --head 0 \
        --sizes 20000,100000,2000000 --out benchmarks/out/projection.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import new_report, plot_lines, write_json
from qkscale import open_store
from qkscale.project import DEFAULT_SAMPLE, ProjectionSettings, get_backend
from qkscale.project.run import embed_points, joint_points, project_head
from qkscale.project.sampling import trustworthiness


def _prefix_tokens(docs: np.ndarray, n_tokens: int) -> int:
    """Tokens of the first whole documents that hold at least ``n_tokens`` tokens."""
    if n_tokens >= len(docs):
        return len(docs)
    boundary = np.flatnonzero(docs[n_tokens:] != docs[n_tokens - 1])
    return n_tokens + (int(boundary[0]) if len(boundary) else len(docs) - n_tokens)


def _run(points: np.ndarray, docs: np.ndarray, settings: ProjectionSettings, backend_name: str) -> dict[str, Any]:
    backend = get_backend(backend_name)
    started = time.perf_counter()
    coords, details = embed_points(points, docs, settings, backend)
    seconds = time.perf_counter() - started
    return {
        "backend": backend.name,
        "library": backend.describe(settings.method, settings.dims),
        "sample": settings.sample,
        "seconds": round(seconds, 4),
        "trustworthiness": round(trustworthiness(points, coords), 4),
        **details,
    }


def warm_up(methods: list[str], backends: set[str]) -> None:
    """One small untimed fit per method and backend: numba compiles umap-learn's and pynndescent's
    functions on their first call (a minute on 2 cores), and a GPU sets up its context."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(1500, 16)).astype(np.float32)  # queries and keys of 750 tokens
    docs = np.repeat(np.arange(75), 10)
    for method in methods:
        for backend_name in sorted(backends):
            embed_points(points, docs, ProjectionSettings(method=method, sample=1000), get_backend(backend_name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--sizes", default="20000,100000,2000000", help="points (queries + keys) per size")
    parser.add_argument("--methods", default="umap,tsne,pca")
    parser.add_argument("--backends", default="cpu", help="backends for the qkscale variant, e.g. cpu,torchdr")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE)
    parser.add_argument("--full-limit", type=float, default=1800.0, help="seconds a full fit may be expected to take")
    parser.add_argument("--out", default="benchmarks/out/projection.json")
    args = parser.parse_args(argv)

    store = open_store(args.store)
    all_docs = store.tokens["doc"].to_numpy()
    q_all, k_all = store.queries(args.layer, args.head), store.keys(args.layer, args.head)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    results: list[dict[str, Any]] = []
    full_seconds: dict[str, tuple[int, float]] = {}  # method -> (points, seconds) of the last full fit

    def record(entry: dict[str, Any]) -> None:
        results.append(entry)
        print(json.dumps(entry), flush=True)

    warm_up(methods, {*args.backends.split(","), "cpu"})
    for size in sizes:
        n_tokens = _prefix_tokens(all_docs, size // 2)
        docs = all_docs[:n_tokens]
        for method in methods:
            settings = ProjectionSettings(method=method, sample=args.sample)
            points, _ = joint_points(q_all[:n_tokens], k_all[:n_tokens], settings)
            base = {"size": size, "points": len(points), "method": method}
            backends = args.backends.split(",")
            if n_tokens == len(all_docs):  # the whole head: time the stage end to end, as `qkscale project` runs it
                first = backends.pop(0)
                started = time.perf_counter()
                head_record = project_head(store, args.layer, args.head, settings, get_backend(first))
                record(
                    {
                        **base,
                        "variant": "qkscale project (end to end)",
                        "seconds": round(time.perf_counter() - started, 4),
                        **{key: head_record[key] for key in ("backend", "library", "placement")},
                        "trustworthiness": round(head_record["trustworthiness"], 4),
                    }
                )
            for backend_name in backends:
                entry = _run(points, docs, settings, backend_name)
                record({**base, "variant": "qkscale", **entry})
                if backend_name == "cpu" and len(points) <= args.sample:  # a full fit: the basis of the bound
                    full_seconds[method] = (len(points), entry["seconds"])
            if len(points) <= args.sample:
                continue  # the qkscale variant was a full fit already
            previous = full_seconds.get(method)
            expected = previous[1] * len(points) / previous[0] if previous else 0.0
            if expected > args.full_limit:
                record({**base, "variant": "full fit", "skipped": f"expected >= {expected:.0f} s (linear bound)"})
                continue
            full = ProjectionSettings(method=method, sample=len(points))
            entry = _run(points, docs, full, "cpu")
            full_seconds[method] = (len(points), entry["seconds"])
            record({**base, "variant": "full fit", **entry})

    add_ratios(results)
    report = new_report("projection")
    report["sections"]["projection"] = {
        "store": str(args.store),
        "head": {"layer": args.layer, "head": args.head, "tokens": len(all_docs)},
        "sample": args.sample,
        "results": results,
    }
    out = Path(args.out)
    write_json(report, out)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each measured variant's seconds over the full fit's of the same size and method (one run each)."""
    full = {(r["size"], r["method"]): r["seconds"] for r in results if r["variant"] == "full fit" and "seconds" in r}
    for entry in results:
        baseline = full.get((entry["size"], entry["method"]))
        if baseline is not None and "seconds" in entry and entry["variant"] != "full fit":
            entry["ratio_to_full_fit"] = round(entry["seconds"] / baseline, 4) if baseline > 0 else None


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Seconds against points, one line per method, variant and library."""
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for entry in results:
        if "seconds" not in entry:
            continue
        xs, ys = lines.setdefault(f"{entry['method']}, {entry['variant']} ({entry['library']})", ([], []))
        xs.append(entry["points"])
        ys.append(max(entry["seconds"], 0.005))
    plot_lines(path, "Projection of one head", "points (queries + keys)", "seconds", lines)


if __name__ == "__main__":
    main()
