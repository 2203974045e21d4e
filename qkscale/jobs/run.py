"""Run a job on a Dask cluster: extract shards, then metrics and projections, resumably.

The coordinator (:func:`run_job`) plans everything first (bad input fails before any task), cuts
the corpus into the extraction's deterministic shards and keeps a bounded number of shard tasks
in flight. Only the tasks' atomic commits write the store; a rerun skips committed shards and
projected heads. Dask reruns the task of a worker that died; a task that raises is retried
:data:`RETRIES` times, then the job stops with an error naming the shard and its documents.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from qkscale.cluster import Cluster, connect, is_address, workers_see_cuda
from qkscale.corpus import shards
from qkscale.extraction import ExtractionPlan, finish_store, load_inputs, plan_extraction, start_store
from qkscale.jobs import tasks
from qkscale.jobs.record import JobError, JobRecord, check_owner, read_job
from qkscale.jobs.spec import JobSpec
from qkscale.metrics import empty_sums, write_head_metrics
from qkscale.project.run import ProjectionPlan, plan_projection
from qkscale.store import Store
from qkscale.store.files import remove_temps
from qkscale.store.projections import PROJECTIONS, projection_key

SUBMIT_WAIT = 120  # seconds `submit` waits for a worker to start the job
RETRIES = 2  # extra tries of a task that raised (a lost worker's task is rerun by Dask itself)
IN_FLIGHT_PER_WORKER = 2  # shard tasks queued per worker: documents are read as tasks finish


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
    options = spec.extract
    plan = plan_extraction(
        spec.model,
        spec.corpus,
        out,
        max_length=options.max_length,
        batch_size=options.batch_size,
        limit_docs=options.limit_docs,
        max_tokens=spec.sampling.max_tokens,
        layers=options.layers,
        docs_per_shard=spec.sampling.docs_per_shard,
        device=device,
        dtype=options.dtype,
        check_device=False,
    )
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
) -> JobSummary:
    """The coordinator: every stage of ``spec`` as tasks on ``cluster``; ``job.json`` follows it."""
    started = time.perf_counter()
    plan = plan or plan_job(spec, out, _workers_device(spec, cluster))
    projection_plans = []
    record = JobRecord(plan.out, spec, job_id, scheduler)
    try:
        start_store(plan, load_inputs(plan.info.source, plan.family, plan.max_length))
        record.update(shards_total=plan.n_shards)
        tokens, extract_seconds = _extract(cluster, plan, record, progress)
        store = finish_store(plan)
        if spec.metrics and not store.has_metrics:
            _metrics(cluster, store, progress)
        if spec.projection is not None:
            projection_plans = _plan_projections(spec, store)
            record.update(heads_total=sum(len(p.heads) for p in projection_plans))
            _project(cluster, projection_plans, spec.projection.backend, record, progress)
    except BaseException as exc:
        record.failure(f"{type(exc).__name__}: {exc}")
        record.update(state="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    summary = JobSummary(
        plan.out,
        tokens,
        extract_seconds,
        sum(len(p.todo) for p in projection_plans),
        time.perf_counter() - started,
    )
    record.update(state="done", tokens=store.n_tokens, metrics=store.has_metrics, summary=summary.format())
    return summary


def _bar(total: int, initial: int, unit: str, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def _extract(cluster: Cluster, plan: ExtractionPlan, record: JobRecord, progress: bool) -> tuple[int, float]:
    """Extract every uncommitted shard as a task; returns (tokens extracted, seconds)."""
    from distributed import as_completed

    store = Store(plan.out)
    done = set(store.committed_shards())
    todo: Iterator[tuple[int, list]] = (
        (shard, docs) for shard, docs in enumerate(shards(plan.documents(), plan.docs_per_shard)) if shard not in done
    )
    worker_plan = replace(plan, corpus=None)  # workers get their documents with each task
    run_id = uuid.uuid4().hex[:8]
    documents: dict[str, tuple[int, int, int]] = {}  # task key -> (shard, first doc, last doc)
    pending = as_completed()

    def submit_next() -> bool:
        item = next(todo, None)
        if item is None:
            return False
        shard, docs = item
        future = cluster.client.submit(
            tasks.extract_shard_task,
            worker_plan,
            shard,
            docs,
            key=f"qkscale-extract-{run_id}-{shard}",
            retries=RETRIES,
            resources=cluster.task_resources(),
        )
        documents[future.key] = (shard, docs[0][0], docs[-1][0])
        pending.add(future)
        return True

    for _ in range(IN_FLIGHT_PER_WORKER * max(cluster.n_workers, 1)):
        if not submit_next():
            break
    tokens, started = 0, time.perf_counter()
    with _bar(plan.n_shards, len(done), "shard", "extract", progress) as bar:
        for future in pending:
            shard, first, last = documents.pop(future.key)
            if future.status != "finished":
                _cancel(cluster, pending)
                exc = future.exception()
                raise JobError(
                    f"shard {shard} (documents {first}-{last}) failed {RETRIES + 1} times: {type(exc).__name__}: {exc}"
                )
            tokens += future.result()["n_tokens"]
            elapsed = time.perf_counter() - started
            bar.update()
            bar.set_postfix_str(f"{tokens / elapsed:,.0f} tokens/s", refresh=False)
            record.update(shards_done=bar.n, tokens_extracted=tokens, tokens_per_s=round(tokens / elapsed, 1))
            submit_next()
    return tokens, time.perf_counter() - started


def _cancel(cluster: Cluster, pending) -> None:
    futures = list(pending.futures)
    if futures:
        cluster.client.cancel(futures)


def _metrics(cluster: Cluster, store: Store, progress: bool) -> None:
    """Head metrics: one task per shard (every head's sums), combined here, then written."""
    from distributed import as_completed

    remove_temps(store.path)
    committed = store.committed_shards()
    futures = cluster.client.map(
        tasks.shard_sums_task, [str(store.path)] * len(committed), committed, retries=RETRIES, pure=False
    )
    sums = empty_sums(store)
    with _bar(len(committed), 0, "shard", "metrics", progress) as bar:
        for future in as_completed(futures):
            sums = sums.combine(future.result())
            bar.update()
    write_head_metrics(store, sums)


def _plan_projections(spec: JobSpec, store: Store) -> list[ProjectionPlan]:
    options = spec.projection
    return [
        plan_projection(
            store,
            method=method,
            dims=dims,
            backend=options.backend,
            layers=options.layers,
            heads=options.heads,
            sample=options.sample,
            metric=options.metric,
            seed=options.seed,
        )
        for method in options.methods
        for dims in options.dims
    ]


def _project(cluster: Cluster, plans: list[ProjectionPlan], backend: str, record: JobRecord, progress: bool) -> None:
    """One task per (head, method, dims) not done yet; ``backend`` (``auto``: the worker's best)."""
    from distributed import as_completed

    total = sum(len(p.heads) for p in plans)
    done = sum(len(p.done) for p in plans)
    futures = []
    for plan in plans:
        settings = plan.settings
        remove_temps(plan.store.path / PROJECTIONS / projection_key(settings.method, settings.dims))
        for layer, head in plan.todo:
            futures.append(
                cluster.client.submit(
                    tasks.project_head_task,
                    str(plan.store.path),
                    layer,
                    head,
                    settings,
                    backend,
                    retries=RETRIES,
                    resources=cluster.task_resources(),
                    pure=False,
                )
            )
    with _bar(total, done, "head", "project", progress) as bar:
        for future in as_completed(futures):
            record_ = future.result()
            bar.update()
            bar.set_postfix_str(f"L{record_['layer']} H{record_['head']}", refresh=False)
            record.update(heads_done=bar.n)


def run_job_task(spec: JobSpec, out: str, job_id: str, scheduler: str) -> str:
    """A submitted job, run inside the cluster by one of its workers (seceded from its thread pool)."""
    from distributed import worker_client

    with worker_client() as client:
        return run_job(spec, Cluster.of(client), Path(out), job_id, scheduler).format()


def submit(spec: JobSpec, scheduler: str, out: str | Path | None = None) -> tuple[str, Path]:
    """Start ``spec`` inside the cluster at ``scheduler``; returns its job id and store once it runs."""
    from distributed import fire_and_forget

    if not is_address(scheduler):
        raise JobError(f"submit needs a scheduler address (tcp://host:8786), not '{scheduler}'; use `qkscale run`")
    out = spec.store_path(out).resolve()
    with connect(scheduler) as cluster:
        plan_job(spec, out, _workers_device(spec, cluster))  # fail here, not later inside the cluster
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
