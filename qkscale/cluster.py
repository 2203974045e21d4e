"""Dask clusters for jobs: the only place where one is created or connected to.

- ``local``: a :class:`distributed.LocalCluster` of worker *processes* on this machine;
- ``local-cuda``: a :class:`dask_cuda.LocalCUDACluster`, one worker per GPU (each worker sees its
  GPU as ``cuda:0``), imported only when asked for;
- a scheduler address (``tcp://host:8786``): any running Dask cluster (Kubernetes, Slurm via
  dask-jobqueue, ``dask scheduler`` + ``dask worker`` ...). It must answer within
  :data:`CONNECT_TIMEOUT` seconds. Its workers must see the same paths (model, corpus, store).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qkscale.errors import QKScaleError

CONNECT_TIMEOUT = 10  # seconds a scheduler address has to answer
GPU = "GPU"  # the worker resource that marks a GPU worker (one per worker)


class ClusterError(QKScaleError):
    """The cluster cannot be created or reached."""


@dataclass
class Cluster:
    """A connected client and what the job needs to know about its workers."""

    client: Any  # distributed.Client
    gpu_workers: bool  # every worker has one GPU (tasks are annotated with the GPU resource)

    @classmethod
    def of(cls, client) -> Cluster:
        """A cluster reached through ``client``; GPU workers are those with the ``GPU`` resource."""
        workers = client.scheduler_info()["workers"].values()
        return cls(client, bool(workers) and all(w.get("resources", {}).get(GPU, 0) >= 1 for w in workers))

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    @property
    def dashboard_link(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.client.dashboard_link
        return None

    def task_resources(self) -> dict[str, int] | None:
        """Resource annotation of a task that wants a GPU (None on CPU workers)."""
        return {GPU: 1} if self.gpu_workers else None


def is_address(scheduler: str) -> bool:
    return "://" in scheduler


@contextlib.contextmanager
def connect(
    scheduler: str = "local",
    workers: int | None = None,
    threads: int = 1,
    memory: str | int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Iterator[Cluster]:
    """Create (``local``, ``local-cuda``) or reach (an address) a cluster; closed on exit if created."""
    from distributed import Client

    if is_address(scheduler):
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"no Dask scheduler answered at {scheduler} within {timeout:g} s ({type(exc).__name__})"
            ) from None
        try:
            yield Cluster.of(client)
        finally:
            client.close()
        return
    if scheduler not in ("local", "local-cuda"):
        raise ClusterError(f"--scheduler must be local, local-cuda or a tcp://host:port address, not '{scheduler}'")
    import dask

    # Workers inherit this config: Dask's statistical profiler samples every worker thread each
    # 10 ms, time the model's forward passes need more on a machine with few cores.
    with dask.config.set({"distributed.worker.profile.enabled": False}), _environment_kept():
        make = _local_cluster if scheduler == "local" else _local_cuda_cluster
        cluster = make(workers, threads, memory)
    with _environment_kept(), cluster, Client(cluster) as client:  # nannies that restart workers set them again
        yield Cluster(client, scheduler == "local-cuda")


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """Undo what starting worker processes does to this process's environment.

    Dask's nannies set ``OMP_NUM_THREADS=1`` and the like for the processes they spawn, in
    ``os.environ``; left there, they would make this process's later subprocesses single-threaded.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of each worker process: torch/BLAS threads follow the spec's threads per worker."""
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def _local_cluster(workers: int | None, threads: int, memory: str | int | None):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=threads,
        processes=True,
        memory_limit=memory or "auto",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        env=_worker_env(threads),
    )


def _local_cuda_cluster(workers: int | None, threads: int, memory: str | int | None):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise ClusterError("local-cuda needs dask-cuda: pip install 'qkscale[gpu]' (or --scheduler local)") from None
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ClusterError("local-cuda needs CUDA GPUs, and torch sees none here (use --scheduler local)")
    if workers is not None and workers > count:
        raise ClusterError(f"cluster.workers {workers} exceeds the {count} GPU(s) torch sees (one worker per GPU)")
    devices = ",".join(str(i) for i in range(workers or count))
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=devices,
        threads_per_worker=threads,
        memory_limit=memory or "auto",
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        resources={GPU: 1},
        env=_worker_env(threads),
    )


def workers_see_cuda(client) -> bool:
    """True if torch sees a CUDA GPU in every worker."""

    def sees_cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    answers = client.run(sees_cuda)
    return bool(answers) and all(answers.values())
