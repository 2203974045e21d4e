"""What every benchmark reports: the machine, library versions, figures as min/median/max over
repeats with their ratio to a baseline measured in the same run, JSON and PNG plots."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LIBRARIES = (
    "qkscale",
    "torch",
    "transformers",
    "numpy",
    "pandas",
    "pyarrow",
    "dask",
    "distributed",
    "scikit-learn",
    "umap-learn",
    "openTSNE",
    "torchdr",
    "datashader",
    "holoviews",
    "panel",
    "bokeh",
    "matplotlib",
    "cupy-cuda12x",
    "cuml-cu12",
)


def versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (those not installed are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def gpu_name() -> str | None:
    """The first CUDA device's name, or None (torch is imported only if installed)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict[str, Any]:
    """CPU, cores, memory, GPU and load: other work on the machine skews every timing."""
    memory = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory,
        "gpu": gpu_name(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, median and max of repeated measurements (and how many)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def figure(values: Sequence[float], unit: str, baseline: Sequence[float] | None = None, **context: Any) -> dict:
    """One reported figure: its spread, and its median's ratio to a baseline measured in the same run."""
    result: dict[str, Any] = {"unit": unit, **spread(values), **context}
    if baseline:
        result["baseline"] = spread(baseline)
        result["ratio_to_baseline"] = statistics.median(values) / statistics.median(baseline)
    return result


def repeat(measure: Callable[[], float], repeats: int) -> list[float]:
    """``repeats`` measurements of ``measure`` (which returns its own seconds or other figure)."""
    return [measure() for _ in range(repeats)]


def new_report(suite: str) -> dict[str, Any]:
    return {
        "suite": suite,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "sections": {},
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    temp.replace(path)


def plot_lines(
    path: Path, title: str, xlabel: str, ylabel: str, lines: dict[str, tuple[Sequence[float], Sequence[float]]]
) -> None:
    """A log-log PNG: one line per method (x: points or tokens, y: seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
