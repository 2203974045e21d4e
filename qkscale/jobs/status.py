"""`qkscale status`: where a job stands, from its record and from what its store holds on disk.

A job whose record says ``running`` while nobody holds the store's writer lock (or its holder is
gone: a dead pid, or a heartbeat that stopped) is reported ``stalled``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qkscale.errors import StoreError
from qkscale.jobs.record import load_job
from qkscale.store import Store, read_manifest
from qkscale.store.lock import holder_gone, read_lock

STALLED_HINT = "its coordinator is gone; submit (or run) the same spec again to resume it"


def job_status(store_path: str | Path) -> dict[str, Any]:
    """The job's record, with shard and head counts recounted from the store itself."""
    path = Path(store_path)
    job = load_job(path)
    if job is None:
        raise StoreError(f"{path} holds no job (no job.json): `qkscale run` or `qkscale submit` make one")
    status = {key: job.get(key) for key in ("job_id", "name", "state", "scheduler", "started", "updated", "wall_s")}
    status.update(
        tokens_per_s=job.get("tokens_per_s"),
        failures=job.get("failures", []),
        heads_total=job.get("heads_total"),
        summary=job.get("summary"),
    )
    if status["state"] == "running":
        holder = read_lock(path)
        if holder is None or holder_gone(holder):  # a coordinator that runs holds the store's lock
            status.update(state="stalled", hint=STALLED_HINT)
    manifest = read_manifest(path)
    if manifest is None:
        return {**status, "shards_done": 0, "shards_total": None, "heads_done": 0}
    store = Store(path)
    status.update(
        shards_done=len(store.committed_shards()),
        shards_total=manifest["n_shards"],
        complete=store.complete,
        metrics=store.has_metrics,
        heads_done=sum(len(heads) for heads in store.projections().values()),
    )
    return status


def format_status(s: dict[str, Any]) -> str:
    shards = f"{s['shards_done']}/{s['shards_total']}" if s["shards_total"] is not None else "not started"
    heads = f"{s['heads_done']}" + (f"/{s['heads_total']}" if s.get("heads_total") else "")
    rows = [
        ("job", f"{s['name']} ({s['job_id']})"),
        ("state", s["state"] + (f", updated {s['updated']}" if s.get("updated") else "")),
        ("scheduler", s["scheduler"]),
        ("shards", shards),
        ("tokens/s", f"{s['tokens_per_s']:,.0f}" if s.get("tokens_per_s") else "-"),
        ("metrics", "computed" if s.get("metrics") else "not yet"),
        ("heads", f"{heads} projected"),
    ]
    if s.get("wall_s") is not None:
        rows.append(("wall time", f"{s['wall_s']:,.1f} s"))
    if s.get("hint"):
        rows.append(("hint", s["hint"]))
    for failure in s["failures"]:
        rows.append(("failure", f"{failure['at']}: {failure['message']}"))
    return "\n".join(f"{name:<10} {value}" for name, value in rows)
