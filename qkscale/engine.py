"""One engine for every stage: a stage declares its units, an executor runs them, one policy rules both.

A :class:`Stage` (extract, metrics, project) is planned before it exists (its ``plan_*`` function
validates everything and writes nothing); then :func:`run_stage` calls ``start`` (create or clean
what the units write into), runs every unit of ``units()`` through an executor, and hands the
results to ``finish`` (combine, finalize). Each unit is one atomic commit, so a rerun resumes.

Executors: :class:`SerialExecutor` runs units one after another in this process (the CLI verbs
and the Python API); the Dask executor (:mod:`qkscale.jobs.executor`) runs them as tasks. The
policy is the same for both: a unit that raises is tried :data:`ATTEMPTS` times (once if it raised
a :class:`QKScaleError`: bad input fails the same way every time), then the stage stops with one
line naming the unit (``shard 12 (documents 3072-3327) failed 3 times: ...``),
pending units are cancelled (their temps are removed by the next start); one tqdm bar; one summary line.
While a stage runs, this process holds the store's writer lock (:mod:`qkscale.store.lock`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from qkscale.errors import QKScaleError
from qkscale.store.files import remove_temps
from qkscale.store.lock import writer_lock

ATTEMPTS = 3  # tries of a unit before its stage stops


class StageError(QKScaleError):
    """A unit of a stage kept failing; the message names it."""


class Progress:
    """What a running unit may report: work done within it (serial runs only) and a short note."""

    def __init__(self, bar: Any = None, counted: Callable[[int, int], None] | None = None):
        self._bar = bar
        self._counted = counted
        self.reset()

    def reset(self) -> None:
        """A new unit starts: nothing of it reported yet."""
        self.advanced = self.counted = 0

    def advance(self, work: int, count: int = 0) -> None:
        """``work`` more of the bar's units done within this unit, ``count`` more of the rate's things."""
        if self._counted is not None:
            self.advanced += work
            self.counted += count
            self._counted(work, count)

    def undo(self) -> None:
        """Take back what a failed attempt reported (it will be tried again from the start)."""
        if self._counted is not None and (self.advanced or self.counted):
            self._counted(-self.advanced, -self.counted)
        self.reset()

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)


QUIET = Progress()


class Stage(ABC):
    """A stage's units and how to run one. Subclasses are small and picklable (a Dask worker gets one)."""

    name: ClassVar[str]  # the bar's label: extract, metrics, project
    work_unit: ClassVar[str]  # what the bar counts: doc, shard, head
    rate_unit: ClassVar[str | None] = None  # what the rate counts (tokens), None for no rate
    uses_gpu: ClassVar[bool] = False  # tasks ask a GPU worker for it

    def start(self) -> None:
        """Before any unit, in the coordinating process: create what units write into, clear its temps."""
        for folder in self.temp_folders():
            remove_temps(folder)

    def temp_folders(self) -> list:
        """Folders where this stage's units write temps (removed when the stage starts: none is running then)."""
        return []

    @abstractmethod
    def store_path(self) -> Path:
        """The store this stage writes: :func:`run_stage` holds its writer lock while the stage runs."""

    @abstractmethod
    def units(self) -> list[Hashable]:
        """The units still to run, in order (units already committed are left out)."""

    @abstractmethod
    def describe(self, unit: Hashable) -> str:
        """The unit in a user's words: ``shard 12 (documents 3072-3327)``, ``head L3H7 umap-2d``."""

    def work(self, unit: Hashable) -> int:
        """How much of the bar one unit is."""
        return 1

    def work_total(self) -> tuple[int, int]:
        """(the bar's total, the part already done before this run)."""
        todo = self.units()
        return len(todo), 0

    def setup(self) -> None:
        """Load what units need (a model), once per process: a Dask worker calls it from its plugin."""
        return None

    def teardown(self) -> None:
        """Release what :meth:`setup` loaded."""
        return None

    @abstractmethod
    def run_unit(self, unit: Hashable, progress: Progress = QUIET) -> Any:
        """Run one unit and commit it atomically; returns a small result for :meth:`finish`."""

    def count(self, result: Any) -> int:
        """How many of the rate's things (tokens) a unit's result holds."""
        return 0

    def note(self, unit: Hashable, result: Any) -> str | None:
        """The bar's note once ``unit`` is done."""
        return None

    def empty(self) -> Any:
        """What :meth:`combine` starts from (default: a dict of every unit's result)."""
        return {}

    def combine(self, combined: Any, unit: Hashable, result: Any) -> Any:
        """Add one unit's result as it arrives, so that memory need not grow with the number of units."""
        combined[unit] = result
        return combined

    def finish(self, combined: Any) -> Any:
        """Finalize what :meth:`combine` gathered; the stage's value."""
        return combined

    def summary(self, value: Any, seconds: float) -> str | None:
        """One line on what the stage did, or None."""
        return None


class Session(Protocol):
    """An executor's run of one stage."""

    window: int  # units in flight at most

    def submit(self, unit: Hashable, attempt: int) -> None: ...

    def completed(self) -> Iterator[tuple[Hashable, Any, BaseException | None]]: ...

    def cancel(self) -> None: ...


class Executor(Protocol):
    def session(self, stage: Stage, progress: Progress) -> Any:
        """A context manager giving a :class:`Session` (stage set up where units run, torn down after)."""


class _SerialSession:
    window = 1

    def __init__(self, stage: Stage, progress: Progress):
        self.stage, self.progress = stage, progress
        self.queue: deque[Hashable] = deque()

    def submit(self, unit: Hashable, attempt: int) -> None:
        self.queue.append(unit)

    def completed(self) -> Iterator[tuple[Hashable, Any, BaseException | None]]:
        while self.queue:
            unit = self.queue.popleft()
            self.progress.reset()
            try:
                result = self.stage.run_unit(unit, self.progress)
            except Exception as exc:  # the policy decides: retry or stop
                yield unit, None, exc
            else:
                yield unit, result, None

    def cancel(self) -> None:
        self.queue.clear()


class SerialExecutor:
    """Runs units one after another in this process (CLI verbs, Python API)."""

    @contextmanager
    def session(self, stage: Stage, progress: Progress) -> Iterator[_SerialSession]:
        stage.setup()
        try:
            yield _SerialSession(stage, progress)
        finally:
            stage.teardown()


@dataclass
class Tally:
    """Units of this run: how many there were to do when it started, how many are done."""

    todo: int
    done: int = 0


@dataclass
class StageRun:
    """What :func:`run_stage` gives back: the stage's value, its summary line and its seconds."""

    value: Any
    summary: str | None
    seconds: float


def _bar(stage: Stage, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit=stage.work_unit, desc=stage.name, disable=not enabled, dynamic_ncols=True
    )


class _Policy:
    """The one policy of every executor: a window of units in flight, retries, the bar, the results."""

    def __init__(self, stage: Stage, bar: Any, on_result: Callable[[Hashable, Any, Tally], None] | None):
        self.stage, self.bar, self.on_result = stage, bar, on_result
        self.todo = deque(stage.units())
        self.tally = Tally(len(self.todo))
        self.attempts: dict[Hashable, int] = {}
        self.combined = stage.empty()
        self.started = time.perf_counter()  # reset once the units start running
        self.counted = 0
        self.progress = Progress(bar, self.advance)

    def advance(self, work: int, count: int) -> None:
        self.counted += count
        self.bar.update(work)
        if self.stage.rate_unit and count:
            rate = self.counted / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} {self.stage.rate_unit}/s", refresh=False)

    def submit_next(self, session: Session) -> None:
        if self.todo:
            unit = self.todo.popleft()
            self.attempts[unit] = 1
            session.submit(unit, 1)

    def failed(self, session: Session, unit: Hashable, error: BaseException) -> None:
        """Try ``unit`` again, or stop the stage naming it."""
        self.progress.undo()
        if isinstance(error, QKScaleError):  # bad input or a damaged store: another try would fail the same way
            raise StageError(f"{self.stage.describe(unit)} failed: {type(error).__name__}: {error}") from error
        if self.attempts[unit] < ATTEMPTS:
            self.attempts[unit] += 1
            session.submit(unit, self.attempts[unit])
            return
        message = f"{self.stage.describe(unit)} failed {ATTEMPTS} times: {type(error).__name__}: {error}"
        raise StageError(message) from error

    def done(self, session: Session, unit: Hashable, result: Any) -> None:
        self.combined = self.stage.combine(self.combined, unit, result)
        self.tally.done += 1
        within = self.progress.advanced  # what a serial unit already reported
        self.progress.reset()
        self.advance(self.stage.work(unit) - within, 0 if within else self.stage.count(result))
        note = self.stage.note(unit, result)
        if note and not self.stage.rate_unit:
            self.bar.set_postfix_str(note, refresh=False)
        if self.on_result is not None:
            self.on_result(unit, result, self.tally)
        self.submit_next(session)


def run_stage(
    stage: Stage,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    on_result: Callable[[Hashable, Any, Tally], None] | None = None,
) -> StageRun:
    """Run every unit of ``stage`` (see the module's docstring for the policy).

    ``on_result(unit, result, tally)`` is called in this process as each unit is done.
    """
    with writer_lock(stage.store_path(), f"qkscale {stage.name}"):
        return _run_locked(stage, executor or SerialExecutor(), progress, on_result)


def _run_locked(
    stage: Stage, executor: Executor, progress: bool, on_result: Callable[[Hashable, Any, Tally], None] | None
) -> StageRun:
    stage.start()
    total, initial = stage.work_total()
    with _bar(stage, total, initial, progress) as bar:
        policy = _Policy(stage, bar, on_result)
        if policy.todo:  # with nothing to do, no model is loaded and no worker is set up
            with executor.session(stage, policy.progress) as session:
                policy.started = time.perf_counter()  # rates count running units, not loading the model
                for _ in range(max(session.window, 1)):
                    policy.submit_next(session)
                try:
                    for unit, result, error in session.completed():
                        if error is None:
                            policy.done(session, unit, result)
                        else:
                            policy.failed(session, unit, error)
                except BaseException:
                    # A session waits for its running tasks and removes their temps (the next start() would too).
                    session.cancel()
                    raise
    value = stage.finish(policy.combined)
    seconds = time.perf_counter() - policy.started
    return StageRun(value, stage.summary(value, seconds), seconds)
