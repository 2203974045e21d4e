"""Benchmark how every stage scales with the corpus: wall time and peak memory at 1M, 3M and 10M tokens.

For each size a MiniLM store of layer 0 (12 heads) is extracted from a corpus of distinct
documents (runs of 3 to 10 consecutive builtin sentences), then each stage runs as a user runs it,
under ``/usr/bin/time -v`` (its wall time and peak resident set):

- ``extract``, ``metrics`` (layer 0), ``project`` PCA and UMAP of one head (L0H0);
- the dashboard in a real browser (:mod:`benchmarks.dashboard`): ``serve start`` (until the port
  opens), ``open head`` (the single view's first paint), ``zoom`` (the server's redraws, median),
  ``cold matrix`` (the server's first session painting every tile); the server's peak memory.

``--matrix-size`` also builds a store of every layer at that size, projects every head by PCA
and serves it, so the cold matrix is measured over all 72 heads (the matrix reads the thumbnails
written by `project`: its cost is set by the number of heads, not tokens). A fitted exponent ``b`` (time or memory ∝
tokens^b, least squares in log-log) sums up each stage: about 1 for work that touches every token,
about 0 for what the rule "memory is set by batch, chunk and sample sizes" bounds. Run::

    python -m benchmarks.scale --sizes 1e6,3e6,1e7 --work /tmp/scale --out benchmarks/out/scale.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import new_report, write_json
from qkscale.corpus.builtin import builtin_sentences

WIDTHS = range(3, 11)  # sentences per document: about 11M MiniLM tokens in all at max_length 128
CLI_STAGES = ("extract", "metrics", "project pca", "project umap")
DASHBOARD_STAGES = ("serve start", "open head", "zoom", "cold matrix")
STAGES = (*CLI_STAGES, *DASHBOARD_STAGES)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,3e6,1e7", help="tokens per store, e.g. 1e6,3e6,1e7")
    parser.add_argument("--stages", default=",".join(STAGES), help="a subset of: " + ", ".join(STAGES))
    parser.add_argument("--matrix-size", type=float, default=None, help="size whose store holds all 72 heads")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/scale-work"), help="stores and corpus")
    parser.add_argument("--keep", action="store_true", help="keep existing stores (resume the benchmark)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/scale.json"))
    return parser.parse_args(argv)


def write_corpus(path: Path) -> Path:
    """One document per line: every run of ``w`` consecutive builtin sentences, for each ``w`` in :data:`WIDTHS`."""
    if path.exists():
        return path
    sentences = builtin_sentences()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", encoding="utf-8") as out:
        for width in WIDTHS:
            for i in range(len(sentences) - width + 1):
                out.write(" ".join(sentences[i : i + width]) + "\n")
    temp.replace(path)
    return path


def timed(command: list[str]) -> dict[str, float]:
    """Run ``command`` under ``/usr/bin/time -v``: its wall seconds and peak resident set (MiB)."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024
    return {"seconds": seconds, "peak_rss_mib": peak}


def qkscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "qkscale.cli", *args]


def extract(store: Path, corpus: Path, tokens: int, *options: str) -> dict[str, float]:
    """Time the extraction of the first ``tokens`` tokens of ``corpus`` into a new ``store``."""
    shutil.rmtree(store, ignore_errors=True)
    return timed(
        qkscale("extract", "--corpus", str(corpus), "--max-tokens", str(tokens), *options, "--out", str(store))
    )


def cli_stages(store: Path, corpus: Path, tokens: int, stages: set[str]) -> dict[str, Any]:
    """Extract layer 0 into ``store`` (unless resuming), then time metrics and the projections of L0H0."""
    found: dict[str, Any] = {}
    if "extract" in stages:
        found["extract"] = extract(store, corpus, tokens, "--layers", "0")
    if "metrics" in stages:
        found["metrics"] = timed(qkscale("metrics", str(store), "--force"))
    for method in ("pca", "umap"):
        if f"project {method}" in stages:
            found[f"project {method}"] = timed(
                qkscale("project", str(store), "--method", method, "--layers", "0", "--heads", "0", "--force")
            )
    return found


def matrix_store(store: Path, corpus: Path, tokens: int, keep: bool) -> dict[str, Any]:
    """Every layer at ``tokens``, every head projected by PCA, served: the cold matrix of all heads."""
    found: dict[str, Any] = {}
    if not (keep and (store / "manifest.json").is_file()):
        found["extract, every layer"] = extract(store, corpus, tokens)
    found["project pca, every head"] = timed(qkscale("project", str(store), "--method", "pca"))
    found["project umap"] = timed(qkscale("project", str(store), "--method", "umap", "--layers", "0", "--heads", "0"))
    found |= dashboard_stages(store, store.parent)
    return found


def dashboard_stages(store: Path, work: Path) -> dict[str, Any]:
    """Serve the store and drive chromium: serve start, open head, zoom and the cold matrix."""
    from benchmarks import dashboard

    out = work / f"dashboard-{store.name}.json"
    dashboard.main(
        ["--store", str(store), "--method", "pca", "--layer", "0", "--head", "0", "--single-method", "umap",
         "--zooms", "6", "--sessions", "1", "--repeats", "2", "--out", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    peak = report["rss_mib"]["peak"]
    zoom = report["zoom"]["server_ms"]
    return {
        "serve start": {"seconds": report["server_ready_s"], "peak_rss_mib": report["rss_mib"]["started"]},
        "open head": {"seconds": report["open_head_s"], "peak_rss_mib": report["rss_mib"]["1_session"]},
        "zoom": {"seconds": zoom["median"] / 1000 if zoom else None, "peak_rss_mib": peak, "server_ms": zoom},
        "cold matrix": {
            "seconds": report["matrix_first_paint_s"]["first_session"]["all_tiles_painted"],
            "heads": report["store"]["heads"],
            "peak_rss_mib": peak,
        },
    }


def describe(store: Path) -> dict[str, Any]:
    """The store's size: tokens, documents, layers and bytes on disk."""
    from qkscale import open_store

    opened = open_store(store)
    return {
        "tokens": opened.n_tokens,
        "documents": opened.manifest.get("n_docs"),
        "layers": len(opened.layers),
        "store_bytes": sum(p.stat().st_size for p in store.rglob("*") if p.is_file()),
    }


def exponent(tokens: list[int], values: list[float | None]) -> float | None:
    """``b`` of ``value ∝ tokens^b``, fitted by least squares over the sizes (None with under 2 sizes)."""
    pairs = [(t, v) for t, v in zip(tokens, values, strict=True) if v]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def fits(sizes: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Every stage's fitted exponent for wall time and for peak memory."""
    ordered = sorted(sizes.values(), key=lambda s: s["tokens"])
    tokens = [s["tokens"] for s in ordered]
    names = dict.fromkeys(name for s in ordered for name in s["stages"])
    return {
        name: {
            measure: exponent(tokens, [s["stages"].get(name, {}).get(measure) for s in ordered])
            for measure in ("seconds", "peak_rss_mib")
        }
        for name in names
    }


def plot(sizes: dict[str, Any], path: Path) -> None:
    """Log-log lines of every stage's wall time and peak memory against tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(sizes.values(), key=lambda s: s["tokens"])
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    names = dict.fromkeys(name for s in ordered for name in s["stages"])
    for axis, measure, label in ((axes[0], "seconds", "wall time (s)"), (axes[1], "peak_rss_mib", "peak RSS (MiB)")):
        for name in names:
            points = [(s["tokens"], s["stages"][name].get(measure)) for s in ordered if name in s["stages"]]
            points = [p for p in points if p[1]]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=name)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("tokens in the store")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("qkscale stages against corpus size (MiniLM layer 0, one machine)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stages = set(args.stages.split(","))
    unknown = stages - set(STAGES)
    if unknown:
        raise SystemExit(f"benchmarks.scale: unknown stages {', '.join(sorted(unknown))}")
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    corpus = write_corpus(args.work / "corpus.txt")
    report = new_report("scale")
    section: dict[str, Any] = {"sizes": {}, "corpus": str(corpus), "model": "minilm", "layers": "0"}
    report["sections"]["scale"] = section
    for size in sizes:
        store = args.work / f"store-{size:.0e}".replace("+", "")
        resumed = args.keep and (store / "manifest.json").is_file()
        chosen = stages - {"extract"} if resumed else stages | {"extract"}
        print(f"== {size:,} tokens: {', '.join(s for s in STAGES if s in chosen)}", flush=True)
        started = time.perf_counter()
        measured = cli_stages(store, corpus, size, chosen)
        if chosen & set(DASHBOARD_STAGES):
            measured |= {k: v for k, v in dashboard_stages(store, args.work).items() if k in chosen}
        section["sizes"][str(size)] = describe(store) | {"stages": measured, "seconds": time.perf_counter() - started}
        section["exponents"] = fits(section["sizes"])
        write_json(report, args.out)
        plot(section["sizes"], args.out.with_suffix(".png"))
    if args.matrix_size is not None:
        size = int(args.matrix_size)
        print(f"== {size:,} tokens, every layer: the cold matrix of every head", flush=True)
        store = args.work / f"store-{size:.0e}-all-layers".replace("+", "")
        measured = matrix_store(store, corpus, size, args.keep)
        section["every_layer"] = describe(store) | {"stages": measured}
        write_json(report, args.out)
    print(json.dumps(section, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
