"""The Dask executor: any stage's units as tasks on a cluster, under the engine's one policy.

The stage goes to every worker once, inside a :class:`StagePlugin` (a ``distributed.WorkerPlugin``:
its ``__init__`` keeps the stage, which holds paths, options and the plan, such as where each
shard starts in the corpus, never a model; ``setup`` loads what the units need, such as the
model), and to workers that join later too. Tasks carry a unit id only
(a shard number, a head key), never documents or arrays, and at most :data:`IN_FLIGHT_PER_WORKER`
tasks per worker are queued, so the scheduler's memory does not grow with the corpus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed import WorkerPlugin, as_completed, get_worker

from qkscale.cluster import GPU, Cluster
from qkscale.engine import QUIET, Progress, Stage, StageError
from qkscale.store.files import remove_temps

IN_FLIGHT_PER_WORKER = 2
CANCEL_WAIT_S = 120  # how long a failed stage waits for its running tasks to finish


class StagePlugin(WorkerPlugin):
    """Holds a stage on a worker: set up when the worker gets it, torn down when it is unregistered.

    Setting up (loading a model) runs in a thread, so that the worker's event loop keeps answering
    the scheduler's heartbeats. With ``resource`` set, only workers that have it set up: the
    stage's tasks go nowhere else.
    """

    def __init__(self, stage: Stage, resource: str | None = None):
        self.stage, self.resource = stage, resource

    def _runs_here(self, worker: Any) -> bool:
        return self.resource is None or worker.state.total_resources.get(self.resource, 0) > 0

    async def setup(self, worker: Any) -> None:
        if self._runs_here(worker):
            await asyncio.to_thread(self.stage.setup)

    async def teardown(self, worker: Any) -> None:
        await asyncio.to_thread(self.stage.teardown)


def _executing(keys: list[str], dask_worker: Any = None) -> bool:
    """True if the worker is running one of ``keys`` (run on every worker by ``Client.run``)."""
    return any(task.key in keys for task in dask_worker.state.executing)


def run_unit_task(plugin: str, unit: Hashable) -> Any:
    """A task: run ``unit`` of the stage that this worker's plugin ``plugin`` holds."""
    return get_worker().plugins[plugin].stage.run_unit(unit, QUIET)


class _DaskSession:
    def __init__(self, cluster: Cluster, stage: Stage, plugin: str):
        self.cluster, self.stage, self.plugin = cluster, stage, plugin
        self.window = IN_FLIGHT_PER_WORKER * max(cluster.n_workers, 1)
        self.pending = as_completed()
        self.units: dict[str, Hashable] = {}

    def submit(self, unit: Hashable, attempt: int) -> None:
        future = self.cluster.client.submit(
            run_unit_task,
            self.plugin,
            unit,
            key=f"{self.plugin}-{unit}-{attempt}".replace(" ", ""),
            resources=self.cluster.task_resources() if self.stage.uses_gpu else None,
            pure=False,
        )
        self.units[future.key] = unit
        self.pending.add(future)

    def completed(self) -> Iterator[tuple[Hashable, Any, BaseException | None]]:
        for future in self.pending:
            unit = self.units.pop(future.key)
            if future.status == "finished":
                yield unit, future.result(), None
            elif future.status == "error":
                yield unit, None, future.exception()
            else:  # cancelled or lost: no exception to fetch
                yield unit, None, RuntimeError(f"the task was {future.status}")

    def cancel(self) -> None:
        """Cancel the pending tasks, wait (up to :data:`CANCEL_WAIT_S`) for those already running, drop temps.

        A running task cannot be interrupted: it finishes (or aborts) its unit. Waiting for it
        means a failed stage leaves no temp file behind.
        """
        futures = list(self.pending.futures)
        if not futures:
            return
        keys = [future.key for future in futures]
        client = self.cluster.client
        client.cancel(futures)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and any(client.run(_executing, keys).values()):
            time.sleep(0.2)
        for folder in self.stage.temp_folders():
            remove_temps(folder)


class DaskExecutor:
    """Runs a stage's units as tasks on ``cluster`` (a job's ``run`` or ``submit``)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    @contextmanager
    def session(self, stage: Stage, progress: Progress) -> Iterator[_DaskSession]:
        name = f"qkscale-{stage.name}-{uuid.uuid4().hex[:8]}"
        client = self.cluster.client
        resource = GPU if stage.uses_gpu and self.cluster.gpu_workers else None
        try:
            try:
                client.register_plugin(StagePlugin(stage, resource), name=name)
            except Exception as exc:  # a worker could not load what the units need
                raise StageError(f"{stage.name}: a worker could not set up: {type(exc).__name__}: {exc}") from None
            yield _DaskSession(self.cluster, stage, name)
        finally:
            with contextlib.suppress(Exception):  # a worker that never had it, a closing cluster
                client.unregister_worker_plugin(name)
