"""Benchmark a whole job end to end: `qkscale run SPEC` wall time, with AttentionViz's scale beside it.

The job runs as a user runs it (a fresh store, a subprocess, its own Dask cluster). The report
gives the wall time, tokens, heads projected, and seconds per head; the reference row is
AttentionViz's published scale (about 2,500 tokens per head; t-SNE of one head 60-146 s in its own
notebooks), not a measurement. ``--limit-docs`` shrinks the spec's corpus (the quick suite). Run::

    python -m benchmarks.endtoend --spec workflows/demo.yaml --out benchmarks/out/endtoend.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import new_report, write_json

ATTENTIONVIZ = {
    "tokens_per_head": 2500,
    "tsne_seconds_per_head": [60, 146],
    "source": "AttentionViz (Yeh et al., 2023): its notebooks' t-SNE runs; the matrix view 'may take up to a minute'",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("workflows/demo.yaml"))
    parser.add_argument("--limit-docs", type=int, default=None, help="override the spec's extract.limit_docs")
    parser.add_argument("--layers", default=None, help="override the spec's projection.layers, e.g. 0")
    parser.add_argument("--methods", default=None, help="override the spec's projection.methods, e.g. pca")
    parser.add_argument("--model", default=None, help="override the spec's model (a local model folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/endtoend.json"))
    return parser.parse_args(argv)


def run_job(spec: Path, scratch: Path, overrides: argparse.Namespace) -> dict[str, Any]:
    """Run the spec into a fresh store under ``scratch``; returns wall time and what the store holds."""
    from qkscale import open_store

    settings = yaml.safe_load(spec.read_text(encoding="utf-8"))
    settings["out"] = str(scratch / "store")
    if overrides.limit_docs is not None:
        settings.setdefault("extract", {})["limit_docs"] = overrides.limit_docs
    if settings.get("projection"):
        if overrides.layers is not None:
            settings["projection"]["layers"] = overrides.layers
        if overrides.methods is not None:
            settings["projection"]["methods"] = overrides.methods.split(",")
    if overrides.model is not None:
        settings["model"] = str(Path(overrides.model).resolve())
    job = scratch / "job.yaml"
    job.write_text(yaml.safe_dump(settings), encoding="utf-8")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qkscale.cli", "run", str(job)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    store = open_store(settings["out"])
    heads = sum(len(h) for h in store.projections().values())
    return {
        "spec": str(spec),
        "limit_docs": settings.get("extract", {}).get("limit_docs"),
        "wall_s": seconds,
        "tokens": store.n_tokens,
        "heads_projected": heads,
        "methods": (settings.get("projection") or {}).get("methods", []),
        "points_per_head": 2 * store.n_tokens,
        "seconds_per_head": seconds / max(heads, 1),
        "tokens_per_s": store.n_tokens / seconds,
    }


def run(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        result = run_job(args.spec, Path(scratch), args)
    reference = ATTENTIONVIZ["tokens_per_head"]
    result["attentionviz_reference"] = ATTENTIONVIZ
    result["tokens_per_head_vs_attentionviz"] = result["tokens"] / reference
    report["sections"]["end_to_end"] = result
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = new_report("end_to_end")
    result = run(args, report)
    write_json(report, args.out)
    print(
        f"{result['spec']}: {result['wall_s']:.0f} s for {result['tokens']:,} tokens and "
        f"{result['heads_projected']} heads ({result['seconds_per_head']:.1f} s per head, "
        f"{result['tokens_per_head_vs_attentionviz']:.0f}x AttentionViz's 2,500 tokens per head)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
