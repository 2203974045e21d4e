"""A job's record in its store (``job.json``): who owns the store, where the job is, what failed.

The coordinator rewrites it atomically after every finished task. ``qkscale status`` reads it and
recounts what the store itself holds (committed shards, projection files), so that the answer is
right even when the coordinator is gone.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qkscale.errors import QKScaleError
from qkscale.jobs.spec import JobSpec
from qkscale.store import layout
from qkscale.store.files import write_json_atomic

JOB_FILE = layout.JOB


class JobError(QKScaleError):
    """The job cannot start (foreign store) or failed (a shard that keeps failing)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_job(store: str | Path) -> dict[str, Any] | None:
    """The job record of ``store``, or None if it has none or it cannot be read (it will be rewritten)."""
    try:
        return load_job(store)
    except JobError:
        return None


def load_job(store: str | Path) -> dict[str, Any] | None:
    """The job record of ``store``, None if it has none; a one-line JobError if it is damaged."""
    path = Path(store) / JOB_FILE
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JobError(f"job record {path} is unreadable: {str(exc).splitlines()[0]}") from None
    if not isinstance(job, dict) or not isinstance(job.get("state"), str):
        raise JobError(f"job record {path} is unreadable: not a qkscale job record")
    return job


def check_owner(out: Path, spec: JobSpec) -> None:
    """Refuse a store that another job (another name or other settings) made."""
    job = read_job(out)
    if job is not None and job.get("fingerprint") != spec.fingerprint():
        raise JobError(
            f"store {out} belongs to job '{job.get('name')}' (made with other settings); "
            "use another --out or the same spec"
        )


class JobRecord:
    """The ``job.json`` of one run of a job; every change is written at once (atomically)."""

    def __init__(self, out: Path, spec: JobSpec, job_id: str, scheduler: str, state: str = "running"):
        self.path = out / JOB_FILE
        self._started = time.perf_counter()
        previous = read_job(out) or {}
        self.data: dict[str, Any] = {
            "job_id": job_id,
            "name": spec.name,
            "fingerprint": spec.fingerprint(),
            "spec": spec.as_dict(),
            "scheduler": scheduler,
            "state": state,
            "started": now(),
            "updated": now(),
            "runs": previous.get("runs", 0) + (state == "running"),
            "failures": [],
        }
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields, updated=now(), wall_s=round(time.perf_counter() - self._started, 1))
        self.write()

    def failure(self, message: str) -> None:
        self.data["failures"].append({"at": now(), "message": message})
        self.write()
