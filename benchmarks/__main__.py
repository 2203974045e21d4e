"""The benchmark suite in one command: every figure beside its baseline, measured in the same run.

    python -m benchmarks --suite quick --out benchmarks/out/quick      # <= 10 minutes on 2 CPU cores
    python -m benchmarks --suite full --store STORE --out benchmarks/out/full       # adds the scale part

Each part is a module of this package that also runs alone (``python -m benchmarks.rendering``,
...). The suite runs them one after another (never two at once: they would time each other),
writes each part's JSON and PNG plots into ``--out``, ``suite.json`` (the machine, library
versions and every part's report) and ``headline.md`` (each figure beside its baseline), and
prints that table. ``--store`` (a large MiniLM store with projections, see the README) feeds the
projection, rendering and dashboard parts of the full suite; the quick suite builds its own
small store.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.headline import markdown, rows_of
from benchmarks.report import new_report, write_json

SUITES = ("quick", "full")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, default="quick")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and PNG files")
    parser.add_argument("--store", type=Path, default=None, help="large store for the full suite")
    parser.add_argument("--parts", default=None, help="only these parts, e.g. rendering,dashboard")
    return parser.parse_args(argv)


def small_store(folder: Path) -> Path:
    """MiniLM over 500 builtin documents (about 15k tokens), PCA of every head, UMAP of one, metrics."""
    import qkscale
    from qkscale.metrics import compute_metrics
    from qkscale.project import project

    store = qkscale.extract(out=folder / "store", limit_docs=500, progress=False)
    project(store, method="pca", progress=False)
    project(store, method="umap", layers=[3], heads=[0], sample=3000, progress=False)
    compute_metrics(store, progress=False)
    return store.path


def parts(args: argparse.Namespace, store: Callable[[], Path], work: Path) -> dict[str, Callable[[], list[str]]]:
    """Each part's command-line arguments for this suite (a callable: the store is made on demand).

    ``work``: a folder for what a part builds (the scale part's stores).
    """
    quick = args.suite == "quick"

    def head() -> list[str]:
        """The store and the head (L3H0) that projection and dashboard measure."""
        return ["--store", str(store()), "--layer", "3", "--head", "0"]

    chosen = {
        "extraction": lambda: ["--docs", "200" if quick else "2000", "--repeats", "3", "--read-repeats", "3"],
        "jobs": lambda: ["--tokens", "20000" if quick else "200000", "--repeats", "1" if quick else "2"],
        "projection": lambda: [
            *head(),
            "--sizes",
            "20000" if quick else "20000,100000,2000000",
            "--methods",
            "umap,pca" if quick else "umap,tsne,pca",
            "--full-limit",
            "120" if quick else "900",
        ],  # fmt: skip
        "rendering": lambda: [
            "--sizes",
            "1000000,10000000",
            "--repeats",
            "3" if quick else "5",
            *([] if quick else ["--store", str(store()), "--method", "pca"]),
        ],  # fmt: skip
        "dashboard": lambda: [
            *head(),
            "--single-method",
            "umap",
            "--repeats",
            "3" if quick else "5",
        ],  # fmt: skip
        # concurrent Bokeh client sessions, one every 2 s, 2 s between actions: matrix, head, 3 zooms, click
        "load": lambda: [
            *("--store", str(store()), "--sessions", "10" if quick else "50"),
            *("--arrival", "2", "--think", "2"),
        ],
        # quick: 200 documents, PCA of layer 0 (UMAP in a fresh job first compiles umap-learn: ~75 s)
        "endtoend": lambda: [
            "--spec",
            "workflows/demo.yaml",
            *(["--limit-docs", "200", "--layers", "0", "--methods", "pca"] if quick else []),
        ],
        # full only (about an hour on 2 cores): MiniLM layer-0 stores of 1M, 3M and 10M tokens
        "scale": lambda: ["--sizes", "1e6,3e6,1e7", "--matrix-size", "1e6", "--work", str(work / "scale-work")],
    }
    if quick:
        del chosen["scale"]
    return chosen


def run_part(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    path = out / f"{name}.json"
    started = time.perf_counter()
    module.main([*argv, "--out", str(path)])
    return {"seconds": time.perf_counter() - started, "argv": argv, "report": json.loads(path.read_text())}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("benchmarks/out") / args.suite
    out.mkdir(parents=True, exist_ok=True)
    if args.suite == "full" and args.store is None:
        raise SystemExit("benchmarks: error: the full suite needs --store (a large store with projections)")
    made: list[Path] = []

    def store() -> Path:
        if args.store is not None:
            return args.store
        if not made:
            made.append(small_store(out / "scratch"))
        return made[0]

    report = new_report(args.suite)
    chosen = parts(args, store, out)
    if args.parts:
        chosen = {name: chosen[name] for name in args.parts.split(",")}
    started = time.perf_counter()
    for name, arguments in chosen.items():
        print(f"== {name}", flush=True)
        report["sections"][name] = run_part(name, arguments(), out)
        write_json(report, out / "suite.json")
    report["seconds"] = time.perf_counter() - started
    write_json(report, out / "suite.json")
    table = markdown(rows_of(report))
    (out / "headline.md").write_text(table + "\n", encoding="utf-8")
    print(f"{table}\nsuite {args.suite}: {report['seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
