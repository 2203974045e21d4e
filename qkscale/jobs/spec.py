"""Job specs: one YAML file describes a whole job (model, corpus, extraction, projection, cluster).

Every field is checked on load; an unknown field, a wrong type or a bad value is an error that
names the field (``extract.batch_size: expected an integer, got 'many'``). Every field is declared
by an options dataclass (:mod:`qkscale.stage_options` for the stages' own).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qkscale.options import SpecError, from_mapping, option, sections
from qkscale.stage_options import ExtractOptions, ProjectOptions

CLUSTER_KINDS = ("local", "local-cuda", "address")

__all__ = ["CLUSTER_KINDS", "ClusterSpec", "JobSpec", "SpecError", "load_spec", "parse_spec"]


@dataclass(frozen=True)
class ClusterSpec:
    """Where the tasks run: ``local`` worker processes, ``local-cuda`` (one per GPU) or ``address``."""

    kind: str = option("local", "local, local-cuda or address.", choices=CLUSTER_KINDS)
    address: str | None = option(None, "tcp://host:8786 for kind: address.")
    workers: int | None = option(None, "local: default = CPU cores; local-cuda: default = every GPU.", min=1)
    threads: int = option(1, "Threads per worker.", min=1)
    memory: str | int | None = option(None, "Per worker, e.g. 4GiB; default: Dask's share of the machine.")


@dataclass(frozen=True)
class _JobFields:
    """The spec's own top-level fields (the others belong to a stage's options or a section)."""

    name: str = option("", "The job's name (its store defaults to stores/<name>).")
    out: str | None = option(None, "Store folder, relative to the working directory.")
    metrics: bool = option(True, "Compute head metrics.")


@dataclass(frozen=True)
class JobSpec:
    name: str
    out: str | None = None  # default: stores/<name>, relative to the working directory
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    projection: ProjectOptions | None = field(default_factory=ProjectOptions)  # null: no projections
    metrics: bool = True
    cluster: ClusterSpec = field(default_factory=ClusterSpec)

    @property
    def model(self) -> str:
        return self.extract.model

    @property
    def corpus(self) -> str:
        return self.extract.corpus

    def as_dict(self) -> dict[str, Any]:
        """The spec in its YAML layout (``model``, ``corpus`` at the top, ``sampling`` apart)."""
        data: dict[str, Any] = {"name": self.name, "out": self.out, "metrics": self.metrics}
        data["cluster"] = asdict(self.cluster)
        data["projection"] = None if self.projection is None else asdict(self.projection)
        for name, value in asdict(self.extract).items():
            section = _EXTRACT_SECTION[name]
            if section is None:
                data[name] = value
            else:
                data.setdefault(section, {})[name] = value
        return data

    def fingerprint(self) -> str:
        """Identity of what the job computes (not where it runs): a store belongs to one fingerprint.

        Options added since 2026-12-01 count only when set, so stores of earlier jobs keep theirs.
        """
        data = {k: v for k, v in self.as_dict().items() if k not in ("cluster", "out")}
        for section, cls in (("extract", ExtractOptions), ("projection", ProjectOptions)):
            if data.get(section) is not None:
                defaults = asdict(cls())
                later = _LATER_OPTIONS[section]
                data[section] = {k: v for k, v in data[section].items() if k not in later or v != defaults[k]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def store_path(self, out: str | Path | None = None) -> Path:
        return Path(out or self.out or Path("stores") / self.name).expanduser()


# Where each section's fields come from: YAML key -> (options class, the fields' section in it).
_SECTIONS: dict[str, tuple[type, str | None]] = {
    "extract": (ExtractOptions, None),
    "sampling": (ExtractOptions, "sampling"),
    "projection": (ProjectOptions, None),
    "cluster": (ClusterSpec, None),
}
_TOP_EXTRACT = tuple(sections(ExtractOptions)["job"])  # model, corpus: written at the top level
# Where each extraction option is written in a spec: None at the top, else its section.
_EXTRACT_SECTION = {
    name: None if section == "job" else section or "extract"
    for section, names in sections(ExtractOptions).items()
    for name in names
}
_LATER_OPTIONS = {
    "extract": {"heads", "bucket", "q_module", "k_module", "n_heads", "head_dim", "causal", "store_dtype"},
    "projection": {"translate", "scale"},
}
_TOP_OWN = tuple(sections(_JobFields)[None])


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
    """Validate a spec given as a dict (the parsed YAML): every field is declared by an options class."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of fields (name, model, corpus, ...)")
    known = sorted({*_TOP_OWN, *_TOP_EXTRACT, *_SECTIONS})
    for key in data:
        if key not in known:
            raise SpecError(f"{source}: unknown field '{key}' (known: {', '.join(known)})")
    if data.get("name") in (None, ""):
        raise SpecError(f"{source}: missing field 'name'")
    own = from_mapping(_JobFields, {k: v for k, v in data.items() if k in _TOP_OWN}, "", source)
    values: dict[str, dict[str, Any]] = {"extract": {}, "projection": {}, "cluster": {}}
    values["extract"] = from_mapping(
        ExtractOptions, {k: v for k, v in data.items() if k in _TOP_EXTRACT}, "", source, section="job"
    )
    for key, (cls, section) in _SECTIONS.items():
        if key in data and not (key == "projection" and data[key] is None):
            target = "extract" if cls is ExtractOptions else key
            values[target].update(from_mapping(cls, data[key], key, source, section))
    projection = None if "projection" in data and data["projection"] is None else ProjectOptions(**values["projection"])
    spec = JobSpec(
        **own,
        extract=ExtractOptions(**values["extract"]),
        projection=projection,
        cluster=ClusterSpec(**values["cluster"]),
    )
    _check_values(spec, source)
    return spec


def _check_values(spec: JobSpec, source: str) -> None:
    """What no single field can tell: fields that need or exclude each other."""
    cluster = spec.cluster
    if cluster.kind == "address" and not cluster.address:
        raise SpecError(f"{source}: cluster.address: kind 'address' needs a scheduler address (tcp://host:8786)")
    if spec.extract.max_tokens is not None and spec.extract.limit_docs is not None:
        raise SpecError(f"{source}: give sampling.max_tokens or extract.limit_docs, not both")
