"""Each option is declared once: the CLI flags, the job spec's YAML and the Python API list the same
options with the same defaults, because all three are derived from the stage's options dataclass."""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields

import pytest
import typer

import qkscale
from qkscale.cli import app
from qkscale.jobs import parse_spec
from qkscale.options import SpecError, from_keywords, info_of
from qkscale.project import project
from qkscale.stage_options import ExtractOptions, ProjectOptions

STAGES = [("extract", ExtractOptions, qkscale.extract), ("project", ProjectOptions, project)]
NOT_OPTIONS = {"extract": {"out"}, "project": {"store", "force"}}  # the verbs' own arguments
YAML_SECTION = {"extract": "extract", "project": "projection"}


def _defaults(cls) -> dict:
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields(cls)}


def _cli_defaults(verb: str) -> dict:
    command = typer.main.get_command(app).commands[verb]
    return {p.name: p.default for p in command.params if p.name not in NOT_OPTIONS[verb]}


def _api_defaults(function) -> dict:
    own = {"store", "model", "corpus", "out", "progress", "force"} - {f.name for f in fields(ExtractOptions)}
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in own and p.kind is not p.VAR_KEYWORD}


def _yaml_spec(verb: str, cls, values: dict) -> dict:
    """A spec that writes ``values`` of ``cls`` where the job spec says each field belongs."""
    spec: dict = {"name": "parity"}
    for name, value in values.items():
        section = info_of(next(f for f in fields(cls) if f.name == name)).section
        if section == "job":
            spec[name] = value
        else:
            spec.setdefault(section or YAML_SECTION[verb], {})[name] = (
                list(value) if isinstance(value, tuple) else value
            )
    return spec


def _parsed(verb: str, spec: dict):
    parsed = parse_spec(spec)
    return parsed.extract if verb == "extract" else parsed.projection


@pytest.mark.parametrize(("verb", "cls", "function"), STAGES)
def test_cli_yaml_and_api_list_the_same_options_with_the_same_defaults(verb, cls, function):
    expected = _defaults(cls)
    assert _cli_defaults(verb) == expected
    assert _api_defaults(function) == {f.name: f.default for f in fields(cls)}
    assert _parsed(verb, {"name": "parity"}) == cls()  # a spec that says nothing gets the same defaults
    assert _parsed(verb, _yaml_spec(verb, cls, asdict(cls()))) == cls()  # every field can be written


def _other_value(cls, f):
    """A valid value of field ``f`` that is not its default."""
    info, default = info_of(f), f.default
    if info.choices:
        return (info.choices[-1],) if isinstance(default, tuple) else info.choices[-1]
    if isinstance(default, bool):
        return not default
    if info.selection:
        return "1"
    if isinstance(default, int) or (default is None and "int" in str(f.type)):
        return (default or 0) + 7
    return "other"


@pytest.mark.parametrize(("verb", "cls", "function"), STAGES)
def test_every_option_reaches_its_stage_from_each_surface(verb, cls, function):
    for f in fields(cls):
        value = _other_value(cls, f)
        assert value != f.default, f.name
        from_yaml = _parsed(verb, _yaml_spec(verb, cls, {f.name: value}))
        from_api = from_keywords(cls, {f.name: value})
        assert getattr(from_yaml, f.name) == getattr(from_api, f.name) == value, f.name


def test_the_same_bounds_hold_on_every_surface():
    with pytest.raises(SpecError, match="extract.batch_size: expected a positive integer, got 0"):
        parse_spec({"name": "x", "extract": {"batch_size": 0}})
    with pytest.raises(qkscale.QKScaleError, match="--batch-size must be a positive number, not 0"):
        from_keywords(ExtractOptions, {"batch_size": 0})
    with pytest.raises(SpecError, match="sampling.docs_per_shard: expected a positive integer, got -1"):
        parse_spec({"name": "x", "sampling": {"docs_per_shard": -1}})
    with pytest.raises(qkscale.QKScaleError, match="unknown option 'batchsize'"):
        qkscale.extract(out="unused", batchsize=8)


def test_docs_per_shard_has_one_default():
    assert ExtractOptions().docs_per_shard == _cli_defaults("extract")["docs_per_shard"]
    assert parse_spec({"name": "x"}).extract.docs_per_shard == ExtractOptions().docs_per_shard
