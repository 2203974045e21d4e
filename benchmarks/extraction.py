"""Benchmark extraction: overhead over a bare forward pass, length bucketing, store size, head reads.

Everything runs in one process, passes interleaved, so that the ratios hold on a noisy machine:

1. ``extract_shard`` over every shard (tokenize or preprocess images, hooked forward, gather,
   write) against a hook-free ``model(...)`` forward over exactly the same batches (the model's
   ``inputs.batches``: the same truncation, bucketing and padding, or the same image processor),
   preprocessing timed in both; the bare pass builds no token rows, document records or thumbnails;
2. both with length bucketing (``bucket=True``, the default) and with random batching: each shard's
   documents shuffled (seeded) and batched in that order (``bucket=False``);
3. MiB on disk per 1k tokens of the store that a whole :func:`qkscale.extract` call writes (that
   call is timed too: it adds model load, corpus pass and manifest to the shard work);
4. seconds to read one head's queries and keys from that store, next to plain file reads of the
   same number of bytes of its ``vectors.arrow`` files. Nothing is dropped from the OS page cache:
   the store has just been written, so both numbers are page-cache reads, not disk reads.

The order of the passes is reversed on every other repeat. On CUDA (``--device cuda``) each
pass ends with a device synchronisation, so that its seconds hold all of its GPU work. Run::

    python -m benchmarks.extraction --docs 2000 --threads 2 --repeats 3 --out benchmarks/out/extraction.json
    python -m benchmarks.extraction --device cuda --dtype float16 --corpus windows.txt --docs 4000 ...
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import tokenizers
import torch
import transformers

import qkscale
from benchmarks.report import cpu_model, gpu_name
from qkscale.corpus import shards
from qkscale.corpus.builtin import builtin_sentences
from qkscale.extraction import ExtractionPlan, LoadedModel, extract_shard, plan_extraction
from qkscale.models import QKCapture, load_model
from qkscale.store import Store, layout

Docs = list[tuple[int, str]]
Result = dict[str, float]
MIB = 2**20

# Passes of one repeat, in the order of even repeats (odd repeats run them reversed).
PASSES = ("extract_bucketed", "bare_bucketed", "extract_random_order", "bare_random_order", "extract_api")
LABELS = {
    "extract_bucketed": "extract_shard, bucketed",
    "bare_bucketed": "bare forward, bucketed",
    "extract_random_order": "extract_shard, random order",
    "bare_random_order": "bare forward, random order",
    "extract_api": "qkscale.extract(), bucketed",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents (or images) of the corpus")
    parser.add_argument("--corpus", default="auto", help="builtin text, or builtin-images for a vision model")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read-repeats", type=int, default=5, help="repeats of each head/raw read")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--docs-per-shard", type=int, default=1024)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32, or float16/bfloat16 on CUDA")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temporary stores")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/extraction.json"))
    return parser.parse_args(argv)


# -- timing helpers ------------------------------------------------------------------------------
class Stopwatch:
    """Total wall time spent inside :meth:`measure` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


@contextmanager
def timed_capture(capture: QKCapture, stopwatch: Stopwatch) -> Iterator[None]:
    """Time the hooked forward passes of ``extract_shard`` (wraps ``capture.run`` on the instance)."""
    run = capture.run

    def timed(*args: Any, **kwargs: Any) -> None:
        with stopwatch.measure():
            run(*args, **kwargs)

    capture.run = timed
    try:
        yield
    finally:
        del capture.run


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a pass's clock stops after it (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- workload ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """The shards, a hooked model for ``extract_shard`` and a second, hook-free copy for the baseline."""

    plan: ExtractionPlan
    hooked: LoadedModel
    bare: torch.nn.Module
    shards: list[Docs]
    shuffled: list[Docs]  # the same shards, documents in a seeded random order
    root: Path

    def shards_for(self, bucket: bool) -> list[Docs]:
        return self.shards if bucket else self.shuffled


def extract_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options shared by :func:`plan_extraction` and :func:`qkscale.extract`."""
    return {
        "limit_docs": args.docs,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "docs_per_shard": args.docs_per_shard,
        "device": args.device,
        "dtype": args.dtype,
    }


def load_workload(args: argparse.Namespace, root: Path) -> Workload:
    plan = plan_extraction(args.model, args.corpus, root / "unused", **extract_options(args))
    hooked = LoadedModel.load(plan)
    bare = load_model(plan.info.source, plan.device, plan.dtype)
    in_order = list(shards(plan.documents(), plan.options.docs_per_shard))
    rng = np.random.default_rng(0)
    shuffled = [[docs[i] for i in rng.permutation(len(docs))] for docs in in_order]
    return Workload(plan, hooked, bare, in_order, shuffled, root)


# -- passes --------------------------------------------------------------------------------------
def extraction_pass(work: Workload, bucket: bool) -> Result:
    """``extract_shard`` over every shard into a temp store; ``forward_s`` is the hooked forward."""
    out = Path(tempfile.mkdtemp(prefix="shards-", dir=work.root))
    plan = replace(work.plan, out=out, options=replace(work.plan.options, bucket=bucket))
    forward, tokens = Stopwatch(), 0
    try:
        start = time.perf_counter()
        with timed_capture(work.hooked.capture, forward):
            for shard, docs in enumerate(work.shards_for(bucket)):
                info = extract_shard(work.hooked, plan, shard, docs)
                tokens += info["n_tokens"]
            synchronize(plan.device)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out)
    return {"seconds": seconds, "tokens": tokens, "forward_s": forward.seconds}


def bare_pass(work: Workload, bucket: bool) -> Result:
    """Preprocess and run the hook-free model over the batches ``extract_shard`` would make."""
    prepare, forward = Stopwatch(), Stopwatch()
    tokens = padded = 0
    start = time.perf_counter()
    for docs in work.shards_for(bucket):
        batches = work.hooked.inputs.batches(docs, work.plan.options.batch_size, bucket)
        while True:
            with prepare.measure():
                batch = next(batches, None)
            if batch is None:
                break
            with forward.measure(), torch.inference_mode():
                work.bare(**batch.to(work.plan.device).inputs)
            tokens += int(batch.real.sum())
            padded += batch.real.numel()
    synchronize(work.plan.device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": tokens,
        "padded_tokens": padded,
        "tokenize_s": prepare.seconds,
        "forward_s": forward.seconds,
    }


def api_pass(args: argparse.Namespace, out: Path) -> Result:
    """The whole ``qkscale.extract(...)`` call; its store stays in ``out`` for the size and read checks."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    store = qkscale.extract(args.model, args.corpus, out, progress=False, **extract_options(args))
    return {"seconds": time.perf_counter() - start, "tokens": store.n_tokens}


def pass_functions(work: Workload, args: argparse.Namespace) -> dict[str, Callable[[], Result]]:
    return {
        "extract_bucketed": partial(extraction_pass, work, True),
        "bare_bucketed": partial(bare_pass, work, True),
        "extract_random_order": partial(extraction_pass, work, False),
        "bare_random_order": partial(bare_pass, work, False),
        "extract_api": partial(api_pass, args, work.root / "api"),
    }


def warm_up(work: Workload) -> None:
    """One small unmeasured pass of each kind: lazy initialisations are paid before timing starts."""
    size = 2 * work.plan.options.batch_size
    small = replace(work, shards=[work.shards[0][:size]], shuffled=[work.shuffled[0][:size]])
    for bucket in (True, False):
        extraction_pass(small, bucket)
        bare_pass(small, bucket)


def run_repeats(passes: dict[str, Callable[[], Result]], repeats: int) -> list[dict[str, Result]]:
    results = []
    for repeat in range(repeats):
        order = PASSES if repeat % 2 == 0 else PASSES[::-1]
        results.append({})
        for name in order:
            gc.collect()
            result = passes[name]()
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            results[-1][name] = result
            print(f"  repeat {repeat + 1}/{repeats} {name:<22} {result['seconds']:8.3f} s", file=sys.stderr)
    return results


# -- summary -------------------------------------------------------------------------------------
def summarize(results: list[dict[str, Result]]) -> dict[str, Any]:
    """min/median/max of every measure of every pass, and the ratios that the benchmark is about."""
    passes = {name: {key: spread([r[name][key] for r in results]) for key in results[0][name]} for name in PASSES}

    def ratio(numerator: str, denominator: str) -> dict[str, Any]:
        seconds = [passes[name]["seconds"] for name in (numerator, denominator)]
        return {
            "of_medians": seconds[0]["median"] / seconds[1]["median"],
            "of_mins": seconds[0]["min"] / seconds[1]["min"],
            "per_repeat": [r[numerator]["seconds"] / r[denominator]["seconds"] for r in results],
        }

    return {
        "passes": passes,
        "overhead_bucketed": ratio("extract_bucketed", "bare_bucketed"),
        "overhead_random_order": ratio("extract_random_order", "bare_random_order"),
        "bucketing_speedup_extract": ratio("extract_random_order", "extract_bucketed"),
        "bucketing_speedup_bare": ratio("bare_random_order", "bare_bucketed"),
        "api_over_shards": ratio("extract_api", "extract_bucketed"),
    }


# -- store size and reads ------------------------------------------------------------------------
def store_size(path: Path) -> dict[str, Any]:
    """Bytes on disk per token, in total and per file name, next to the float16 q+k floor."""
    store = Store(path)
    per_1k = store.n_tokens / 1000
    by_name: dict[str, int] = defaultdict(int)
    for file in path.rglob("*"):
        if file.is_file():
            by_name[file.name] += file.stat().st_size
    floor = 2 * len(store.layers) * store.n_heads * store.head_dim * np.dtype(np.float16).itemsize
    return {
        "n_tokens": store.n_tokens,
        "bytes": store.bytes_on_disk(),
        "mib_per_1k_tokens": store.bytes_on_disk() / MIB / per_1k,
        "by_file_mib_per_1k_tokens": {name: size / MIB / per_1k for name, size in sorted(by_name.items())},
        "qk_float16_floor_mib_per_1k_tokens": floor * 1000 / MIB,
    }


def raw_read(files: Sequence[Path], nbytes: int) -> float:
    """Seconds to read the first ``nbytes`` bytes of ``files`` with plain unbuffered reads."""
    start = time.perf_counter()
    view = memoryview(np.empty(nbytes, np.uint8))
    offset = 0
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while offset < nbytes and (n := handle.readinto(view[offset:])):
                offset += n
        if offset >= nbytes:
            break
    return time.perf_counter() - start


def read_head(store: Store, layer: int, head: int) -> tuple[float, int]:
    """Seconds to read one head's queries and keys, and their bytes."""
    start = time.perf_counter()
    queries, keys = store.queries(layer, head), store.keys(layer, head)
    return time.perf_counter() - start, queries.nbytes + keys.nbytes


def head_reads(path: Path, repeats: int) -> dict[str, Any]:
    """One head read on a freshly opened store and again on the same store, against raw reads."""
    store = Store(path)
    layer, head = store.layers[len(store.layers) // 2], store.n_heads // 2
    files = sorted((path / layout.SHARDS).glob(f"*/{layout.VECTORS}"))
    fresh, reused = [], []
    for _ in range(repeats):
        store = Store(path)
        seconds, nbytes = read_head(store, layer, head)
        fresh.append(seconds)
        reused.append(read_head(store, layer, head)[0])
    total = sum(file.stat().st_size for file in files)
    raw_same = [raw_read(files, nbytes) for _ in range(repeats)]
    raw_all = [raw_read(files, total) for _ in range(repeats)]
    return {
        "layer": layer,
        "head": head,
        "head_bytes": nbytes,
        "vectors_bytes": total,
        "record_batches": sum(ipc.open_file(pa.memory_map(str(file))).num_record_batches for file in files),
        "fresh_store_s": spread(fresh),
        "reused_store_s": spread(reused),
        "raw_read_same_bytes_s": spread(raw_same),
        "raw_read_all_vectors_s": spread(raw_all),
        "raw_read_all_vectors_mib_per_s": total / MIB / statistics.median(raw_all),
        "page_cache": "warm: the store was just written and nothing was dropped",
    }


# -- report --------------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every timing."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "gpu": gpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "load_average_at_end": load_average(),
        "versions": {
            "qkscale": qkscale.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
        },
    }


def _ms(values: dict[str, float]) -> str:
    return f"{values['median'] * 1e3:8.1f} ms [{values['min'] * 1e3:.1f}-{values['max'] * 1e3:.1f}]"


def format_report(report: dict[str, Any]) -> str:
    summary, size, reads, config = report["summary"], report["store"], report["head_read"], report["config"]
    machine = report["machine"]
    passes = summary["passes"]
    lines = [
        f"extraction benchmark: {config['docs']} docs, {int(passes['bare_bucketed']['tokens']['median']):,} tokens, "
        f"{config['threads']} threads, {config['repeats']} repeats; median [min-max]",
        f"{machine['cpu']}, {machine['usable_cpus']} cpus; 1-min load average "
        f"{_load(machine['load_average_at_start'])} at start, {_load(machine['load_average_at_end'])} at end",
        f"{'pass':<30}{'seconds':>24}{'tokens/s':>12}",
    ]
    for name in PASSES:
        seconds = passes[name]["seconds"]
        lines.append(
            f"{LABELS[name]:<30}{seconds['median']:>9.3f} [{seconds['min']:.3f}-{seconds['max']:.3f}]"
            f"{passes[name]['tokens_per_s']['median']:>12,.0f}"
        )
    lines += [
        _ratio_line("overhead extract/bare, bucketed", summary["overhead_bucketed"], " (goal <= 1.05)"),
        _ratio_line("overhead extract/bare, random order", summary["overhead_random_order"]),
        _ratio_line("bucketing speedup, extract", summary["bucketing_speedup_extract"]),
        _ratio_line("bucketing speedup, bare", summary["bucketing_speedup_bare"]),
        _ratio_line("qkscale.extract() / extract_shard", summary["api_over_shards"]),
        _breakdown(passes, "bucketed"),
        _breakdown(passes, "random_order"),
        f"store: {size['mib_per_1k_tokens']:.2f} MiB per 1k tokens ("
        + ", ".join(f"{name} {mib:.2f}" for name, mib in size["by_file_mib_per_1k_tokens"].items())
        + f"; float16 q+k floor {size['qk_float16_floor_mib_per_1k_tokens']:.2f})",
        f"head read (layer {reads['layer']} head {reads['head']}, q+k {reads['head_bytes'] / MIB:.2f} MiB, "
        f"{reads['record_batches']} record batches):",
        f"  store.queries+keys, fresh Store  {_ms(reads['fresh_store_s'])}",
        f"  store.queries+keys, same Store   {_ms(reads['reused_store_s'])}",
        f"  raw read of the same bytes       {_ms(reads['raw_read_same_bytes_s'])}",
        f"  raw read of all vectors.arrow    {_ms(reads['raw_read_all_vectors_s'])} "
        f"({reads['vectors_bytes'] / MIB:.1f} MiB, {reads['raw_read_all_vectors_mib_per_s']:,.0f} MiB/s, page cache)",
    ]
    return "\n".join(lines)


def _load(average: Sequence[float] | None) -> str:
    return "n/a" if average is None else f"{average[0]:.2f}"


def _ratio_line(label: str, ratio: dict[str, Any], note: str = "") -> str:
    return f"{label:<38} {ratio['of_medians']:.3f} of medians, {ratio['of_mins']:.3f} of mins{note}"


def _breakdown(passes: dict[str, Any], batching: str) -> str:
    extract, bare = passes[f"extract_{batching}"], passes[f"bare_{batching}"]
    padded = bare["tokens"]["median"] / bare["padded_tokens"]["median"]
    return (
        f"{batching:<13} extract: forward {extract['forward_s']['median']:.2f} s + rest "
        f"{extract['seconds']['median'] - extract['forward_s']['median']:.2f} s | bare: tokenize "
        f"{bare['tokenize_s']['median']:.2f} s, forward {bare['forward_s']['median']:.2f} s | "
        f"real/padded tokens {padded:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    load_at_start = load_average()
    start = time.perf_counter()
    builtin_sentences()
    corpus_build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="qkscale-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        work = load_workload(args, root)
        print(f"{work.plan.n_docs} docs in {len(work.shards)} shards; warming up", file=sys.stderr)
        warm_up(work)
        results = run_repeats(pass_functions(work, args), args.repeats)
        report = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {**machine_info(), "load_average_at_start": load_at_start},
            "config": {
                **vars(args),
                "docs": work.plan.n_docs,
                "tmp": str(root),
                "out": str(args.out),
                "layers": work.plan.layers,
                "corpus_build_s": corpus_build_s,
            },
            "repeats": results,
            "summary": summarize(results),
            "store": store_size(root / "api"),
            "head_read": head_reads(root / "api", args.read_repeats),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
