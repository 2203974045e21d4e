"""Benchmark rendering one head's joint embedding: datashader against what users would pick instead.

For N points (queries + keys of one head) it times, in the same run and interleaved:

* datashader aggregation into an 800x800 canvas, by count and by query/key (``count_cat``), as the
  single-head view re-aggregates on every zoom;
* the baselines: ``numpy.histogram2d`` (the bare binning a user could write) and a matplotlib
  scatter drawn to an 800x800 PNG (what an AttentionViz-style notebook does), the scatter only up
  to ``--scatter-limit`` points.

Points come from a stored projection (``--store``, the head's real x/y, tiled with a little jitter
up to sizes beyond the head) or, without a store, from a seeded mixture of Gaussians. Run::

    python -m benchmarks.rendering --sizes 1000000,10000000 --repeats 5 --out benchmarks/out/rendering.json
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.report import figure, new_report, plot_lines, write_json

CANVAS = 800


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="points per head")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scatter-limit", type=int, default=1_000_000, help="largest matplotlib scatter")
    parser.add_argument("--store", type=Path, default=None, help="take the points from this store's projection")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--head", type=int, default=0)
    parser.add_argument("--method", default="umap")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/rendering.json"))
    return parser.parse_args(argv)


def mixture_points(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` points from 12 Gaussian blobs, half queries and half keys (a stand-in for a head)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (12, 2))
    blob = rng.integers(0, len(centres), n)
    xy = centres[blob] + rng.normal(0, rng.uniform(0.3, 1.5, len(centres))[blob, None], (n, 2))
    return _frame(xy, rng)


def head_points(store: Path, layer: int, head: int, method: str, n: int, seed: int = 0) -> pd.DataFrame:
    """The head's projected points, tiled with jitter (1% of the extent) to ``n`` points."""
    from qkscale import open_store

    projection = open_store(store).projection(layer, head, method, 2)
    xy = projection[["x", "y"]].to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(xy), n) if n > len(xy) else rng.permutation(len(xy))[:n]
    jitter = (xy.max(axis=0) - xy.min(axis=0)) * 0.01
    copies = xy[picked] + (rng.normal(0, 1, (n, 2)) * jitter if n > len(xy) else 0.0)
    return _frame(copies, rng)


def _frame(xy: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    kind = pd.Categorical.from_codes(rng.integers(0, 2, len(xy)).astype(np.int8), ["q", "k"])
    return pd.DataFrame({"x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32), "kind": kind})


def datashader_seconds(points: pd.DataFrame, by_kind: bool) -> float:
    import datashader as ds

    canvas = ds.Canvas(plot_width=CANVAS, plot_height=CANVAS)
    started = time.perf_counter()
    canvas.points(points, "x", "y", agg=ds.count_cat("kind") if by_kind else ds.count())
    return time.perf_counter() - started


def histogram_seconds(points: pd.DataFrame) -> float:
    started = time.perf_counter()
    np.histogram2d(points["x"].to_numpy(), points["y"].to_numpy(), bins=CANVAS)
    return time.perf_counter() - started


def scatter_seconds(points: pd.DataFrame) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    started = time.perf_counter()
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    colours = np.where(points["kind"].cat.codes.to_numpy() == 0, "#1f77b4", "#ff7f0e")
    ax.scatter(points["x"], points["y"], s=1, c=colours, linewidths=0)
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    return time.perf_counter() - started


def measure(points: pd.DataFrame, repeats: int, scatter: bool) -> dict[str, Any]:
    """Every variant ``repeats`` times, interleaved (after one untimed warm-up of each)."""
    variants = {
        "datashader count": lambda: datashader_seconds(points, False),
        "datashader by query/key": lambda: datashader_seconds(points, True),
        "numpy histogram2d": lambda: histogram_seconds(points),
    }
    if scatter:
        variants["matplotlib scatter"] = lambda: scatter_seconds(points)
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    result = {}
    for name, values in times.items():
        baseline = times.get("matplotlib scatter") or times["numpy histogram2d"]
        result[name] = figure(values, "s", None if values is baseline else baseline, points=len(points))
    return result


def run(args: argparse.Namespace, report: dict[str, Any], plots: Path) -> dict[str, Any]:
    sizes = [int(s) for s in str(args.sizes).split(",")]
    section: dict[str, Any] = {
        "canvas": f"{CANVAS}x{CANVAS}",
        "points_from": f"{args.store} L{args.layer}H{args.head} {args.method}" if args.store else "gaussian mixture",
        "sizes": {},
    }
    for n in sizes:
        points = head_points(args.store, args.layer, args.head, args.method, n) if args.store else mixture_points(n)
        section["sizes"][str(n)] = measure(points, args.repeats, n <= args.scatter_limit)
        del points
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for n, variants in section["sizes"].items():
        for name, result in variants.items():
            xs, ys = lines.setdefault(name, ([], []))
            xs.append(int(n))
            ys.append(result["median"])
    plot_lines(plots / "rendering.png", "one head's embedding into 800x800 px", "points", "seconds (median)", lines)
    report["sections"]["rendering"] = section
    return section


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = new_report("rendering")
    section = run(args, report, args.out.parent)
    write_json(report, args.out)
    for n, variants in section["sizes"].items():
        for name, result in variants.items():
            ratio = f"  ({result['ratio_to_baseline']:.3f} of baseline)" if "ratio_to_baseline" in result else ""
            print(f"{int(n):>11,} points  {name:<26} {result['median'] * 1e3:9.1f} ms{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
