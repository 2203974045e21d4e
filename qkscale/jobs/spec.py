"""Job specs: one YAML file describes a whole job (model, corpus, extraction, projection, cluster).

Every field is checked on load; an unknown field, a wrong type or a bad value is an error that
names the field (``extract.batch_size: expected a positive integer, got 'many'``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qkscale.errors import QKScaleError

CLUSTER_KINDS = ("local", "local-cuda", "address")


class SpecError(QKScaleError):
    """The job spec is missing, not YAML, or has a bad field."""


@dataclass(frozen=True)
class ExtractSpec:
    """How to run the model (the options of ``qkscale extract``)."""

    max_length: int = 128
    layers: str | None = None  # "0,2-4"; None for all
    batch_size: int = 64
    dtype: str = "auto"
    device: str = "auto"
    limit_docs: int | None = None


@dataclass(frozen=True)
class SamplingSpec:
    """How much of the corpus, and in what units of work."""

    max_tokens: int | None = None  # the first documents holding at most this many tokens
    docs_per_shard: int = 256


@dataclass(frozen=True)
class ProjectionSpec:
    """Which joint embeddings to compute, one task per (head, method, dims)."""

    methods: tuple[str, ...] = ("umap",)
    dims: tuple[int, ...] = (2,)
    backend: str = "auto"
    sample: int = 20_000
    layers: str | None = None
    heads: str | None = None
    metric: str = "cosine"
    seed: int = 0


@dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run: ``local`` worker processes, ``local-cuda`` (one per GPU) or ``address``."""

    kind: str = "local"
    address: str | None = None  # tcp://host:8786 for kind: address
    workers: int | None = None  # local: default = CPU cores; local-cuda: default = every GPU
    threads: int = 1  # per worker
    memory: str | None = None  # per worker, e.g. "4GiB"; default: Dask's share of the machine


@dataclass(frozen=True)
class JobSpec:
    name: str
    model: str = "minilm"
    corpus: str = "auto"
    out: str | None = None  # default: stores/<name>, relative to the working directory
    extract: ExtractSpec = field(default_factory=ExtractSpec)
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    projection: ProjectionSpec | None = field(default_factory=ProjectionSpec)  # null: no projections
    metrics: bool = True
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Identity of what the job computes (not where it runs): a store belongs to one fingerprint."""
        data = {k: v for k, v in self.as_dict().items() if k not in ("cluster", "out")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def store_path(self, out: str | Path | None = None) -> Path:
        return Path(out or self.out or Path("stores") / self.name).expanduser()


_SECTIONS = {"extract": ExtractSpec, "sampling": SamplingSpec, "projection": ProjectionSpec, "cluster": ClusterSpec}


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate the YAML job spec at ``path``."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecError(f"job spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise SpecError(f"job spec {path} is not valid YAML{line}") from None
    return parse_spec(data, str(path))


def parse_spec(data: Any, source: str = "job spec") -> JobSpec:
    """Validate a spec given as a dict (the parsed YAML)."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields (name, model, corpus, ...)")
    values = _check_fields(data, JobSpec, "", source)
    for name, section in _SECTIONS.items():
        if name in values:
            if values[name] is None and name == "projection":
                continue
            if not isinstance(values[name], dict):
                raise SpecError(f"{source}: {name}: expected a mapping of fields")
            values[name] = section(**_check_fields(values[name], section, f"{name}.", source))
    spec = JobSpec(**values)
    _check_values(spec, source)
    return spec


# Field types as written in the YAML: what each field accepts.
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "model": (str,),
    "corpus": (str,),
    "out": (str,),
    "metrics": (bool,),
    "max_length": (int,),
    "layers": (str, int),
    "heads": (str, int),
    "batch_size": (int,),
    "dtype": (str,),
    "device": (str,),
    "limit_docs": (int,),
    "max_tokens": (int,),
    "docs_per_shard": (int,),
    "methods": (list, str),
    "dims": (list, int),
    "backend": (str,),
    "sample": (int,),
    "metric": (str,),
    "seed": (int,),
    "kind": (str,),
    "address": (str,),
    "workers": (int,),
    "threads": (int,),
    "memory": (str, int),
}
_REQUIRED = ("name",)
_POSITIVE = ("max_length", "batch_size", "limit_docs", "max_tokens", "docs_per_shard", "sample", "workers", "threads")


def _check_fields(data: dict, cls: type, prefix: str, source: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            raise SpecError(f"{source}: unknown field '{prefix}{key}' (known: {', '.join(sorted(known))})")
    for key in _REQUIRED if cls is JobSpec else ():
        if data.get(key) in (None, ""):
            raise SpecError(f"{source}: missing field '{key}'")
    values = {}
    for key, value in data.items():
        if key in _SECTIONS and cls is JobSpec:
            values[key] = value
            continue
        if value is None:
            values[key] = None
            continue
        accepted = _TYPES[key]
        if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
            kinds = " or ".join(
                {"str": "text", "int": "an integer", "bool": "true/false", "list": "a list"}[t.__name__]
                for t in accepted
            )
            raise SpecError(f"{source}: {prefix}{key}: expected {kinds}, got {value!r}")
        if key in _POSITIVE and value < 1:
            raise SpecError(f"{source}: {prefix}{key}: expected a positive integer, got {value}")
        values[key] = value
    return _normalise(values)


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """Lists become tuples (specs are frozen); layer/head numbers become selection text."""
    if "methods" in values:
        methods = values["methods"]
        values["methods"] = tuple([methods] if isinstance(methods, str) else methods)
    if "dims" in values:
        dims = values["dims"]
        values["dims"] = tuple([dims] if isinstance(dims, int) else dims)
    for key in ("layers", "heads"):
        if isinstance(values.get(key), int):
            values[key] = str(values[key])
    return values


def _check_values(spec: JobSpec, source: str) -> None:
    from qkscale.project.base import DIMS, METHODS

    if spec.projection is not None:
        for method in spec.projection.methods:
            if method not in METHODS:
                choices = ", ".join(METHODS)
                raise SpecError(f"{source}: projection.methods: unknown method {method!r} (choose from {choices})")
        for dims in spec.projection.dims:
            if dims not in DIMS:
                raise SpecError(f"{source}: projection.dims: expected 2 or 3, got {dims!r}")
    cluster = spec.cluster
    if cluster.kind not in CLUSTER_KINDS:
        raise SpecError(f"{source}: cluster.kind: expected one of {', '.join(CLUSTER_KINDS)}, got {cluster.kind!r}")
    if cluster.kind == "address" and not cluster.address:
        raise SpecError(f"{source}: cluster.address: kind 'address' needs a scheduler address (tcp://host:8786)")
    if spec.sampling.max_tokens is not None and spec.extract.limit_docs is not None:
        raise SpecError(f"{source}: give sampling.max_tokens or extract.limit_docs, not both")
