"""GPU check: extraction on CUDA against a bare forward pass, UMAP up to 2M points, normalisation on cupy.

Run by ``benchmarks/gpu_check.sh`` on a machine with one CUDA GPU (see the README). Sections, in
this order, each beside its baseline from the same run; a section that fails records its error
and the next one runs, and ``gpu.json`` is rewritten after every section:

1. ``head_store``: ``qkscale.extract`` of one layer over the 1.2M-token corpus (tokens/s), the
   store that the other sections read (one head: about 2M points);
2. ``normalisation``: joint normalisation of that head with cupy on the GPU against numpy;
3. ``extraction``: :mod:`benchmarks.extraction` on CUDA in float16 (``extract_shard`` against a
   hook-free forward over the same batches, length bucketing against random batching);
4. ``projection``: :mod:`benchmarks.projection` with the torchdr backend on the GPU against
   umap-learn / scikit-learn on the CPU cores, at 20k, 100k and 2M points;
5. ``torchdr_full``: a torchdr UMAP fitted on all 2M points at once (its KeOps neighbour search),
   in a subprocess with a time limit;
6. ``end_to_end``: ``qkscale run workflows/demo.yaml`` (a Dask job) on the GPU, projecting the heads
   of layer 0 (all 72 heads take about 3.5 minutes: torchdr spends about 2.5 s on any UMAP).

    python -m benchmarks.gpu --out benchmarks/out/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpora import write_windows
from benchmarks.report import figure, new_report, write_json

LAYER, HEAD = 3, 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu"))
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the stores (default: a temp folder)")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script on a small scale)")
    parser.add_argument("--model", default="minilm", help="minilm or a local model folder")
    parser.add_argument("--docs", type=int, default=3000, help="documents of the extraction benchmark")
    parser.add_argument("--head-docs", type=int, default=None, help="documents of the head store (all: 15,572)")
    parser.add_argument("--sizes", default="20000,100000,2000000", help="points of the projection benchmark")
    parser.add_argument("--full-limit", type=float, default=60.0, help="seconds a CPU full fit may be expected to take")
    parser.add_argument("--torchdr-points", type=int, default=2_000_000)
    parser.add_argument("--torchdr-limit", type=float, default=90.0, help="seconds for the torchdr full fit")
    parser.add_argument("--end-to-end-limit", type=float, default=100.0, help="seconds for the demo job")
    parser.add_argument("--end-to-end-layers", default="0", help="layers the demo job projects (all 72 heads: 0-5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=None, help="only these sections, e.g. normalisation,extraction")
    parser.add_argument("--torchdr-full-child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _dtype(device: str) -> str:
    return "float16" if device.startswith("cuda") else "float32"


# -- sections ------------------------------------------------------------------------------------
def head_store(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One layer of MiniLM over the windowed corpus: the head that the other sections read."""
    import qkscale

    corpus = write_windows(scratch / "windows4.txt")
    started = time.perf_counter()
    store = qkscale.extract(
        args.model,
        str(corpus),
        scratch / "head-store",
        layers=[LAYER],
        limit_docs=args.head_docs,
        batch_size=256,
        device=args.device,
        dtype=_dtype(args.device),
        progress=False,
    )
    seconds = time.perf_counter() - started
    return {"tokens": store.n_tokens, "layers": [LAYER], "seconds": seconds, "tokens_per_s": store.n_tokens / seconds}


def _head(scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    from qkscale import open_store

    store = open_store(scratch / "head-store")
    return store.queries(LAYER, HEAD), store.keys(LAYER, HEAD)


def normalisation(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """cupy (arrays already on the GPU, and with the host-to-device copy) against numpy."""
    import cupy

    from qkscale.joint import normalize

    q, k = _head(scratch)

    def numpy_run() -> float:
        started = time.perf_counter()
        normalize(q, k)
        return time.perf_counter() - started

    def cupy_run(copy: bool) -> float:
        resident = None if copy else (cupy.asarray(q), cupy.asarray(k))
        cupy.cuda.Device().synchronize()
        started = time.perf_counter()
        q_gpu, k_gpu = resident or (cupy.asarray(q), cupy.asarray(k))
        normalize(q_gpu, k_gpu)
        cupy.cuda.Device().synchronize()
        return time.perf_counter() - started

    cupy_run(False)  # kernels compile on first use
    on_cpu = [numpy_run() for _ in range(args.repeats)]
    resident = [cupy_run(False) for _ in range(args.repeats)]
    copied = [cupy_run(True) for _ in range(args.repeats)]
    points = 2 * len(q)
    return {
        "points": points,
        "numpy": figure(on_cpu, "s"),
        "cupy, arrays on the GPU": figure(resident, "s", baseline=on_cpu, points=points),
        "cupy, with the copy to the GPU": figure(copied, "s", baseline=on_cpu, points=points),
    }


def extraction(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from benchmarks import extraction as bench

    out = args.out / "extraction.json"
    corpus = write_windows(scratch / "windows4.txt")
    argv = ["--device", args.device, "--dtype", _dtype(args.device), "--corpus", str(corpus), "--docs", str(args.docs)]
    argv += ["--model", args.model, "--batch-size", "256", "--threads", str(min(os.cpu_count() or 1, 16))]
    bench.main([*argv, "--repeats", str(args.repeats), "--read-repeats", "3", "--tmp", str(scratch), "--out", str(out)])
    return {"summary": json.loads(out.read_text())["summary"]}


def projection(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from benchmarks import projection as bench

    out = args.out / "projection.json"
    argv = ["--store", str(scratch / "head-store"), "--layer", str(LAYER), "--head", str(HEAD)]
    argv += ["--sizes", args.sizes, "--methods", "umap,pca", "--backends", "torchdr,cpu"]
    bench.main([*argv, "--full-limit", str(args.full_limit), "--out", str(out)])
    return json.loads(out.read_text())["sections"]["projection"]


def torchdr_full(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """torchdr UMAP on every point (KeOps neighbours), in a child process that the time limit can stop."""
    result = scratch / "torchdr-full.json"
    command = [sys.executable, "-m", "benchmarks.gpu", "--out", str(args.out), "--scratch", str(scratch)]
    command += ["--device", args.device]
    command += ["--torchdr-points", str(args.torchdr_points), "--torchdr-full-child", str(result)]
    try:
        subprocess.run(command, check=True, timeout=args.torchdr_limit)
    except subprocess.TimeoutExpired:
        return {"points": args.torchdr_points, "skipped": f"did not finish within {args.torchdr_limit:.0f} s"}
    return json.loads(result.read_text())


def torchdr_full_child(args: argparse.Namespace, result: Path) -> None:
    import torch
    import torchdr

    from qkscale.project import ProjectionSettings
    from qkscale.project.base import MIN_DIST, N_NEIGHBORS
    from qkscale.project.run import joint_points
    from qkscale.project.sampling import trustworthiness

    q, k = _head(result.parent)
    n_tokens = min(len(q), args.torchdr_points // 2)
    points, _ = joint_points(q[:n_tokens], k[:n_tokens], ProjectionSettings(method="umap"))
    started = time.perf_counter()
    umap = torchdr.UMAP(
        n_neighbors=N_NEIGHBORS, min_dist=MIN_DIST, backend="keops", device=args.device, random_state=0, verbose=False
    )
    coords = umap.fit_transform(torch.from_numpy(points).to(args.device))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    coords = coords.detach().cpu().numpy()
    report = {
        "points": len(points),
        "library": f"torchdr {torchdr.__version__} (KeOps k-NN)",
        "seconds": seconds,
        "trustworthiness": trustworthiness(points, coords),
    }
    result.write_text(json.dumps(report), encoding="utf-8")


def end_to_end(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from benchmarks import endtoend

    out = args.out / "endtoend.json"
    command = [sys.executable, "-m", "benchmarks.endtoend", "--spec", "workflows/demo.yaml", "--out", str(out)]
    command += ["--layers", args.end_to_end_layers]
    command += [] if args.model == "minilm" else ["--model", args.model]
    try:
        subprocess.run(command, check=True, timeout=args.end_to_end_limit)
    except subprocess.TimeoutExpired:
        return {"skipped": f"did not finish within {args.end_to_end_limit:.0f} s"}
    return {**json.loads(out.read_text())["sections"]["end_to_end"], "reference": endtoend.ATTENTIONVIZ["source"]}


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "head_store": head_store,
    "normalisation": normalisation,
    "extraction": extraction,
    "projection": projection,
    "torchdr_full": torchdr_full,
    "end_to_end": end_to_end,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.torchdr_full_child is not None:
        torchdr_full_child(args, args.torchdr_full_child)
        return 0
    if args.device.startswith("cuda") and not _cuda_available():
        raise SystemExit("benchmarks.gpu: error: torch sees no CUDA GPU (--device cpu only tries the script out)")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="qkscale-gpu-"))
    scratch.mkdir(parents=True, exist_ok=True)
    report = new_report("gpu")
    chosen = args.sections.split(",") if args.sections else list(SECTIONS)
    started = time.perf_counter()
    for name in chosen:
        print(f"== {name}", flush=True)
        section_started = time.perf_counter()
        try:
            section = SECTIONS[name](args, scratch)
        except Exception as exc:  # one shot on a lent GPU: record the failure, go on with the next section
            traceback.print_exc()
            section = {"error": f"{type(exc).__name__}: {exc}"}
        section["section_seconds"] = time.perf_counter() - section_started
        report["sections"][name] = section
        print(json.dumps(section, default=float)[:2000], flush=True)
        write_json(report, args.out / "gpu.json")
    report["seconds"] = time.perf_counter() - started
    write_json(report, args.out / "gpu.json")
    if args.scratch is None:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"gpu check: {report['seconds']:.0f} s; results in {args.out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
