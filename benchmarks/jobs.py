"""Benchmark Dask jobs: extraction tokens/s with 1 and 2 worker processes, and peak memory per worker.

Each cluster is a real LocalCluster (1 thread per worker). Its workers load the model in a small
warm-up job first, so that the timed job measures extraction, not model loading. Parallel
efficiency = (tokens/s with 2 workers) / (2 x tokens/s with 1 worker). The memory figure is each
worker's peak resident set (``ru_maxrss``) after a job of ``--tokens`` tokens. Run::

    python -m benchmarks.jobs --tokens 200000 --repeats 2 --docs-per-shard 100 --batch-size 16 --out jobs.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qkscale.cluster import connect
from qkscale.jobs import parse_spec
from qkscale.jobs.run import new_job_id, run_job


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens of the builtin corpus per job")
    parser.add_argument("--repeats", type=int, default=2)
    # Small shards keep the tail short (the last shard runs alone while the other worker idles).
    parser.add_argument("--docs-per-shard", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/jobs.json"))
    return parser.parse_args(argv)


def _spec(name: str, out: Path, batch_size: int = 64, **sampling: Any):
    return parse_spec(
        {
            "name": name,
            "model": "minilm",
            "corpus": "builtin",
            "out": str(out),
            "extract": {"batch_size": batch_size},
            "sampling": sampling,
            "projection": None,
            "metrics": False,
        }
    )


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(workers: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Tokens/s of ``repeats`` extraction jobs on a fresh cluster of ``workers`` processes."""
    runs = []
    with connect("local", workers=workers, threads=1) as cluster:
        warm = _spec("warm-up", root / f"warm-{workers}", max_tokens=2000 * workers, docs_per_shard=30)
        run_job(warm, cluster, root / f"warm-{workers}", new_job_id(warm), "local")
        for repeat in range(args.repeats):
            out = root / f"w{workers}-r{repeat}"
            spec = _spec(
                f"bench-{workers}", out, args.batch_size, max_tokens=args.tokens, docs_per_shard=args.docs_per_shard
            )
            started = time.perf_counter()
            summary = run_job(spec, cluster, out, new_job_id(spec), "local")
            runs.append(
                {
                    "tokens": summary.tokens,
                    "extract_s": summary.extract_seconds,
                    "wall_s": time.perf_counter() - started,
                    "tokens_per_s": summary.tokens_per_s,
                }
            )
        peaks = cluster.client.run(_peak_rss_mib)
    rates = [r["tokens_per_s"] for r in runs]
    return {
        "workers": workers,
        "runs": runs,
        "tokens_per_s": {"min": min(rates), "median": statistics.median(rates), "max": max(rates)},
        "peak_rss_mib_per_worker": sorted(peaks.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qkscale-jobs-bench-") as tmp:
        one = measure(1, args, Path(tmp))
        two = measure(2, args, Path(tmp))
    efficiency = two["tokens_per_s"]["median"] / (2 * one["tokens_per_s"]["median"])
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "config": {**vars(args), "out": str(args.out)},
        "one_worker": one,
        "two_workers": two,
        "parallel_efficiency": efficiency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for result in (one, two):
        rate = result["tokens_per_s"]
        print(
            f"{result['workers']} worker(s): {rate['median']:,.0f} tokens/s [{rate['min']:,.0f}-{rate['max']:,.0f}], "
            f"peak RSS per worker {', '.join(f'{m:,.0f}' for m in result['peak_rss_mib_per_worker'])} MiB"
        )
    print(f"parallel efficiency (2 workers vs 2 x 1 worker): {efficiency:.3f} (goal >= 0.85)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
