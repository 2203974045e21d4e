"""The headline table of a suite run (``suite.json``) or a GPU check (``gpu.json``), in Markdown.

One row per figure: what qkscale does, what a user would otherwise do (measured in the same run),
and the ratio of the two. ``python -m benchmarks`` prints it at the end; it also runs alone::

    python -m benchmarks.headline benchmarks/out/full/suite.json benchmarks/out/gpu/gpu.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # figure, qkscale, baseline, ratio
HEADER = ("figure", "qkscale", "baseline (same run)", "ratio")


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _ratio(value: float) -> str:
    return f"{value:.2g}×"


def extraction(report: dict[str, Any], where: str = "") -> Iterator[Row]:
    summary = report["summary"]
    passes = summary["passes"]

    def speed(name: str) -> float:
        return passes[name]["tokens_per_s"]["median"]

    yield (
        f"extraction{where}, tokens/s ({int(passes['bare_bucketed']['tokens']['median']):,} tokens)",
        f"{_n(speed('extract_bucketed'))} (`extract_shard`)",
        f"{_n(speed('bare_bucketed'))} (bare forward pass)",
        f"{_ratio(summary['overhead_bucketed']['of_medians'])} time",
    )
    if "extract_random_order" not in passes:
        return  # an older report, which compared with corpus order
    yield (
        f"length bucketing{where}, tokens/s",
        f"{_n(speed('extract_bucketed'))} (bucketed)",
        f"{_n(speed('extract_random_order'))} (random batches)",
        f"{_ratio(1 / summary['bucketing_speedup_extract']['of_medians'])} time",
    )


def jobs(report: dict[str, Any]) -> Iterator[Row]:
    two, one = report["two_workers"]["tokens_per_s"]["median"], report["one_worker"]["tokens_per_s"]["median"]
    yield (
        "Dask job extraction, tokens/s",
        f"{_n(two)} (2 workers)",
        f"{_n(one)} (1 worker)",
        f"{two / one:.2f}× speed (efficiency {report['parallel_efficiency']:.2f})",
    )


def projection(
    results: list[dict[str, Any]], where: str = "", baselines: dict[tuple, dict[str, Any]] | None = None
) -> Iterator[Row]:
    """For each method and size, qkscale's run against its baseline: the full fit, or the bound that skipped it."""
    if baselines is None:
        baselines = {(r["size"], r["method"]): r for r in results if r["variant"] == "full fit"}
    for entry in results:
        other = baselines.get((entry["size"], entry["method"]))
        if other is None or other is entry or entry["variant"] == "full fit" or "seconds" not in entry:
            continue
        if entry.get("backend") == "cpu" and where:
            continue  # on a GPU machine, the CPU runs are the baselines
        name = f"{entry['method'].upper().replace('TSNE', 't-SNE')} of one head{where}, {entry['points']:,} points"
        how = ", read to write" if "end to end" in entry["variant"] else ""
        ours = f"{_s(entry['seconds'])}, trust {entry['trustworthiness']:.3f} ({entry['library']}{how})"
        if "skipped" in other:
            yield name, ours, f"full fit not run: {other['skipped']}", "—"
            continue
        label = "full fit" if other["variant"] == "full fit" else "same sample, on the CPU cores"
        theirs = f"{_s(other['seconds'])}, trust {other['trustworthiness']:.3f} ({label}, {other['library']})"
        yield name, ours, theirs, f"{_ratio(entry['seconds'] / max(other['seconds'], 1e-3))} time"


def rendering(section: dict[str, Any]) -> Iterator[Row]:
    for size, figures in section["sizes"].items():
        ours = figures["datashader by query/key"]
        baseline = "matplotlib scatter" if "matplotlib scatter" in figures else "numpy histogram2d"
        yield (
            f"render one head, {int(size):,} points, 800×800",
            f"{_s(ours['median'])} (datashader, by query/key)",
            f"{_s(figures[baseline]['median'])} ({baseline})",
            f"{_ratio(ours['ratio_to_baseline'])} time",
        )


def dashboard(report: dict[str, Any]) -> Iterator[Row]:
    paint = report["matrix_first_paint_s"]
    later = paint.get("later_sessions") or paint["warm_cache"]  # results before 2026-12-03 name them by cache
    first = paint.get("first_session") or paint["cold_cache"]
    yield (
        f"matrix view of {report['store']['heads']} heads, first paint",
        f"{_s(later['all_tiles_painted']['median'])} (first session {_s(first['all_tiles_painted'])})",
        "AttentionViz: 'may take up to a minute'",
        "—",
    )
    zoom = report["zoom"]
    yield (
        f"single-head zoom, {zoom['points']:,} points",
        f"{zoom['server_ms']['median']:.0f} ms (server re-aggregation)",
        "—",
        "—",
    )


def load(section: dict[str, Any]) -> Iterator[Row]:
    zoom = section["actions_s"]["zoom"]
    arrival, think = section.get("arrival_s", 0.0), section.get("think_s", 0.0)
    pace = f"one every {arrival:g} s, {think:g} s between actions" if arrival or think else "all at once"
    yield (
        f"{section['sessions']} concurrent sessions ({pace}; matrix, head, 3 zooms, click each)",
        f"zoom p95 {_s(zoom['p95'])} (p50 {_s(zoom['p50'])}); {section['errors']} errors; "
        f"server peak {section['server_peak_rss_mib']:.0f} MiB",
        "goal: no error, zoom p95 <= 1 s on 2 cores",
        "—",
    )


def end_to_end(section: dict[str, Any], where: str = "") -> Iterator[Row]:
    yield (
        f"`qkscale run workflows/demo.yaml`{where}",
        f"{_s(section['wall_s'])}: {section['tokens']:,} tokens, {section['heads_projected']} heads"
        f"{''.join(' ' + method.upper() for method in section.get('methods', []))} "
        f"({section['seconds_per_head']:.1f} s per head)",
        "AttentionViz: about 2,500 tokens per head, t-SNE 60–146 s per head",
        f"{section['tokens_per_head_vs_attentionviz']:.0f}× tokens per head",
    )


def normalisation(section: dict[str, Any]) -> Iterator[Row]:
    gpu, cpu = section["cupy, with the copy to the GPU"], section["numpy"]
    yield (
        f"joint normalisation, {section['points']:,} points",
        f"{_s(gpu['median'])} (cupy, copy to the GPU included)",
        f"{_s(cpu['median'])} (numpy)",
        f"{_ratio(gpu['ratio_to_baseline'])} time",
    )


def scale(section: dict[str, Any]) -> Iterator[Row]:
    """Each stage at the largest size, with the exponents of its time and memory against the corpus."""
    largest = max(section["sizes"].values(), key=lambda size: size["tokens"])
    for name, stage in largest["stages"].items():
        fit = section["exponents"].get(name, {})
        exponents = ", ".join(
            f"{label} ∝ N^{fit[key]:.2f}"
            for key, label in (("seconds", "time"), ("peak_rss_mib", "memory"))
            if fit.get(key) is not None
        )
        yield (
            f"{name}, {largest['tokens']:,} tokens",
            f"{_s(stage['seconds'])}, {stage['peak_rss_mib'] / 1024:.2f} GB peak" if stage["seconds"] else "—",
            exponents or "—",
            "—",
        )


def suite_rows(suite: dict[str, Any]) -> Iterator[Row]:
    parts: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
        "extraction": extraction,
        "jobs": jobs,
        "projection": lambda r: projection(r["sections"]["projection"]["results"]),
        "rendering": lambda r: rendering(r["sections"]["rendering"]),
        "dashboard": dashboard,
        "load": lambda r: load(r["sections"]["load"]),
        "endtoend": lambda r: end_to_end(r["sections"]["end_to_end"]),
        "scale": lambda r: scale(r["sections"]["scale"]),
    }
    for name, section in suite["sections"].items():
        if name in parts:
            yield from parts[name](section["report"])


def gpu_rows(check: dict[str, Any]) -> Iterator[Row]:
    sections, gpu = check["sections"], f" on {check['machine'].get('gpu') or 'the GPU'}"
    if "summary" in sections.get("extraction", {}):
        yield from extraction(sections["extraction"], gpu)
    if "numpy" in sections.get("normalisation", {}):
        yield from normalisation(sections["normalisation"])
    if "results" in sections.get("projection", {}):
        results = sections["projection"]["results"]
        yield from projection(results, gpu, _cpu_runs(results))
    if "wall_s" in sections.get("end_to_end", {}):
        yield from end_to_end(sections["end_to_end"], gpu)


def _cpu_runs(results: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """On a GPU machine, torchdr's runs are compared with qkscale's path on the CPU cores."""
    return {(r["size"], r["method"]): r for r in results if r.get("backend") == "cpu" and r["variant"] == "qkscale"}


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rows_of(report: dict[str, Any]) -> list[Row]:
    """The rows of a suite, a GPU check or a scale benchmark's JSON."""
    if report.get("suite") == "scale":
        return list(scale(report["sections"]["scale"]))
    return list(gpu_rows(report) if report.get("suite") == "gpu" else suite_rows(report))


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(argv if argv is not None else sys.argv[1:])
    if not paths:
        raise SystemExit("usage: python -m benchmarks.headline SUITE_OR_GPU_JSON [...]")
    rows = [row for path in paths for row in rows_of(json.loads(Path(path).read_text(encoding="utf-8")))]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
