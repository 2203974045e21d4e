"""Jobs: a YAML spec run as Dask tasks (extract -> metrics -> projections), resumable; submit/status."""

from qkscale.jobs.record import JobError, read_job
from qkscale.jobs.run import JobSummary, run, submit
from qkscale.jobs.spec import JobSpec, SpecError, load_spec, parse_spec
from qkscale.jobs.status import format_status, job_status

__all__ = [
    "JobError",
    "JobSpec",
    "JobSummary",
    "SpecError",
    "format_status",
    "job_status",
    "load_spec",
    "parse_spec",
    "read_job",
    "run",
    "submit",
]
