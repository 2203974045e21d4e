"""Run a job on a Dask cluster: the extract, metrics and project stages, resumably.

The coordinator (:func:`run_job`) plans everything first (bad input fails before any task), then
runs each stage through the engine's one policy (:func:`qkscale.engine.run_stage`) with the Dask
executor: tasks carry unit ids (shard numbers, head keys) and the stage reaches every worker once,
in a WorkerPlugin that loads the model. Only the units' atomic commits write the store; a rerun
skips committed shards and projected heads. A unit that fails 3 times stops the job with an error
naming it (``shard 12 (documents 3072-3327)``, ``head L3H7 umap-2d``); pending tasks are cancelled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from qkscale.cluster import Cluster, connect, is_address, workers_see_cuda
from qkscale.engine import Stage, StageError, Tally, run_stage
from qkscale.extraction import ExtractionPlan, ExtractStage, plan_extraction
from qkscale.jobs.executor import DaskExecutor
from qkscale.jobs.record import JobError, JobRecord, check_owner, read_job
from qkscale.jobs.spec import JobSpec
from qkscale.metrics import plan_metrics
from qkscale.project.run import plan_projection
from qkscale.store.lock import check_unlocked, writer_lock

SUBMIT_WAIT = 120  # seconds `submit` waits for a worker to start the job


@dataclass
class JobSummary:
    store: Path
    tokens: int
    extract_seconds: float
    heads_projected: int
    wall_seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.extract_seconds if self.extract_seconds else 0.0

    def format(self) -> str:
        return (
            f"job done: {self.tokens:,} tokens extracted ({self.tokens_per_s:,.0f} tokens/s), "
            f"{self.heads_projected} heads projected, {self.wall_seconds:,.1f} s wall time; store {self.store}"
        )


def new_job_id(spec: JobSpec) -> str:
    return f"{spec.name}-{uuid.uuid4().hex[:8]}"


def scheduler_of(spec: JobSpec, scheduler: str | None) -> str:
    """``--scheduler`` if given, else the spec's cluster (kind, or its address)."""
    if scheduler:
        return scheduler
    return spec.cluster.address if spec.cluster.kind == "address" else spec.cluster.kind


def run(
    spec: JobSpec, scheduler: str | None = None, out: str | Path | None = None, progress: bool = True
) -> JobSummary:
    """Run ``spec`` to the end on its cluster (or ``scheduler``); blocks, with progress bars.

    A local cluster's job is planned before the cluster starts, so that bad input fails at once.
    """
    target = scheduler_of(spec, scheduler)
    out = spec.store_path(out).resolve()
    plan = None if is_address(target) else plan_job(spec, out, _local_device(spec, target))
    cluster_spec = spec.cluster
    with connect(target, cluster_spec.workers, cluster_spec.threads, cluster_spec.memory) as cluster:
        if progress and cluster.dashboard_link:
            print(f"Dask dashboard: {cluster.dashboard_link}", flush=True)
        return run_job(spec, cluster, out, new_job_id(spec), target, progress, plan)


def _local_device(spec: JobSpec, scheduler: str) -> str:
    """The device of a local cluster's workers: they see this machine's GPUs."""
    if spec.extract.device != "auto":
        return spec.extract.device
    if scheduler == "local-cuda":
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _workers_device(spec: JobSpec, cluster: Cluster) -> str:
    if spec.extract.device != "auto":
        return spec.extract.device
    return "cuda" if workers_see_cuda(cluster.client) else "cpu"


def plan_job(spec: JobSpec, out: Path, device: str) -> ExtractionPlan:
    """Check the spec against the model, corpus and store for workers on ``device`` (nothing is written)."""
    options = asdict(replace(spec.extract, device=device))
    plan = plan_extraction(out=out, check_device=False, **options)
    check_owner(plan.out, spec)
    return plan


def run_job(
    spec: JobSpec,
    cluster: Cluster,
    out: Path,
    job_id: str,
    scheduler: str,
    progress: bool = False,
    plan: ExtractionPlan | None = None,
    command: str = "qkscale run",
) -> JobSummary:
    """The coordinator: every stage of ``spec`` as tasks on ``cluster``; ``job.json`` follows it.

    It holds the store's writer lock (as ``command``, for job ``job_id``) from start to end.
    """
    started = time.perf_counter()
    plan = plan or plan_job(spec, out, _workers_device(spec, cluster))
    with writer_lock(plan.out, command, job=job_id):  # the stages' tasks write under the coordinator's lock
        return _coordinate(spec, plan, DaskExecutor(cluster), job_id, scheduler, progress, started)


def _coordinate(
    spec: JobSpec,
    plan: ExtractionPlan,
    executor: DaskExecutor,
    job_id: str,
    scheduler: str,
    progress: bool,
    started: float,
) -> JobSummary:
    record = JobRecord(plan.out, spec, job_id, scheduler)
    tokens = heads = 0

    def stage(stage: Stage, on_result: Callable[[Any, Any, Tally], None] | None = None):
        try:
            return run_stage(stage, executor, progress=progress, on_result=on_result)
        except StageError as exc:
            raise JobError(str(exc)) from None

    try:
        extraction = ExtractStage(plan)
        record.update(shards_total=plan.n_shards)
        extract_started = time.perf_counter()

        def extracted(shard: int, info: dict[str, int], tally: Tally) -> None:
            nonlocal tokens
            tokens += info["n_tokens"]
            elapsed = time.perf_counter() - extract_started
            record.update(
                shards_done=plan.n_shards - tally.todo + tally.done,
                tokens_extracted=tokens,
                tokens_per_s=round(tokens / elapsed, 1),
            )

        extracted_run = stage(extraction, extracted)
        store, extract_seconds = extracted_run.value, extracted_run.seconds  # from the first task on
        if spec.metrics and not store.has_metrics:
            stage(plan_metrics(store))
        if spec.projection is not None:
            projection = plan_projection(store, **asdict(spec.projection))
            total, already = projection.work_total()
            record.update(heads_total=total)

            def projected(unit: Any, result: Any, tally: Tally) -> None:
                nonlocal heads
                heads = tally.done
                record.update(heads_done=already + tally.done)

            stage(projection, projected)
    except BaseException as exc:
        record.failure(f"{type(exc).__name__}: {exc}")
        record.update(state="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    summary = JobSummary(plan.out, tokens, extract_seconds, heads, time.perf_counter() - started)
    record.update(state="done", tokens=store.n_tokens, metrics=store.has_metrics, summary=summary.format())
    return summary


def run_job_task(spec: JobSpec, out: str, job_id: str, scheduler: str) -> str:
    """A submitted job, run inside the cluster by one of its workers (seceded from its thread pool)."""
    from distributed import worker_client

    with worker_client() as client:
        return run_job(spec, Cluster.of(client), Path(out), job_id, scheduler, command="qkscale submit").format()


def submit(spec: JobSpec, scheduler: str, out: str | Path | None = None) -> tuple[str, Path]:
    """Start ``spec`` inside the cluster at ``scheduler``; returns its job id and store once it runs."""
    from distributed import fire_and_forget

    if not is_address(scheduler):
        raise JobError(f"submit needs a scheduler address (tcp://host:8786), not '{scheduler}'; use `qkscale run`")
    out = spec.store_path(out).resolve()
    with connect(scheduler) as cluster:
        plan_job(spec, out, _workers_device(spec, cluster))  # fail here, not later inside the cluster
        check_unlocked(out)
        job_id = new_job_id(spec)
        JobRecord(out, spec, job_id, scheduler, state="submitted")
        future = cluster.client.submit(
            run_job_task, spec, str(out), job_id, scheduler, key=f"qkscale-job-{job_id}", pure=False
        )
        fire_and_forget(future)
        _wait_until_started(out, job_id, future)
    return job_id, out


def _wait_until_started(out: Path, job_id: str, future, timeout: float = SUBMIT_WAIT) -> None:
    """Return once a worker has taken the job (its record says so), or once the job failed to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = read_job(out) or {}
        if job.get("job_id") == job_id and job.get("state") != "submitted":
            return
        if future.status == "error":
            exc = future.exception()
            raise JobError(f"job {job_id} failed to start in the cluster: {type(exc).__name__}: {exc}")
        time.sleep(0.2)
    raise JobError(f"no worker took job {job_id} within {timeout:g} s (are the workers busy or gone?)")
