"""Options declared once: a frozen dataclass per stage, from which every surface is derived.

A field made with :func:`option` carries its help text, bounds, choices and aliases. From the
dataclass come the CLI flags (:func:`cli_command`, typer), the YAML section of a job spec and its
validation (:func:`from_mapping`), and the Python API's keyword arguments (:func:`from_keywords`,
:func:`api_signature`), so the three cannot drift apart.
"""

from __future__ import annotations

import functools
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any

from qkscale.errors import OptionError, QKScaleError

_KEY = "qkscale"


class SpecError(QKScaleError):
    """The job spec is missing, not YAML, or has a bad field."""


@dataclass(frozen=True)
class OptionInfo:
    """What a field of an options dataclass means and accepts."""

    help: str
    min: int | None = None  # smallest allowed value of an integer
    choices: tuple[Any, ...] | None = None  # allowed values (of each element, for a sequence)
    aliases: tuple[str, ...] = ()  # other names: a CLI flag, a YAML key, an API keyword
    section: str | None = None  # the job spec's section, when not the dataclass's own
    selection: bool = False  # an index selection like "0,2-4": text, an integer or a list of integers
    choice_error: str | None = None  # message for a value not in choices: "unknown method {value!r} ..."


def option(default: Any, help: str, **info: Any) -> Any:
    """A dataclass field with its :class:`OptionInfo` (keyword arguments of that class)."""
    return field(default=default, metadata={_KEY: OptionInfo(help, **info)})


def info_of(f) -> OptionInfo:
    return f.metadata.get(_KEY) or OptionInfo("")


@dataclass(frozen=True)
class Kind:
    """A field's type: its base types, whether None is allowed, whether it holds a sequence."""

    bases: tuple[type, ...]
    optional: bool
    many: bool

    @property
    def base(self) -> type:
        return self.bases[0]

    @classmethod
    def of(cls, hint: Any) -> Kind:
        args = typing.get_args(hint)
        optional = type(None) in args
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            bases = tuple(a for a in args if a is not type(None))
        else:
            bases = (hint,)
        if typing.get_origin(bases[0]) is tuple:
            return cls((typing.get_args(bases[0])[0],), optional, True)
        return cls(bases, optional, False)


@functools.cache
def kinds(cls: type) -> dict[str, Kind]:
    hints = typing.get_type_hints(cls)
    return {f.name: Kind.of(hints[f.name]) for f in fields(cls)}


def defaults(cls: type) -> dict[str, Any]:
    """Every option's default."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _names(f) -> tuple[str, ...]:
    return (f.name, *info_of(f).aliases)


_WORDS = {str: "text", int: "an integer", bool: "true/false", float: "a number"}


@dataclass(frozen=True)
class Problem:
    """Why a value does not fit a field: ``what`` is 'type', 'min' or 'choice'."""

    what: str
    expected: str
    shown: str
    message: str | None = None  # the field's own message (choices with ``choice_error``)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_selection(value: Any) -> bool:
    """Text, an integer, or a non-empty sequence of integers (a list, a range, an array)."""
    if isinstance(value, str) or _is_integer(value):
        return True
    return isinstance(value, Sequence | range) and len(value) > 0 and all(_is_integer(v) for v in value)


def _problem(f, kind: Kind, value: Any) -> Problem | None:
    """What is wrong with ``value`` for field ``f``, or None."""
    info = info_of(f)
    if value is None:
        return None if kind.optional else Problem("type", _WORDS[kind.base], repr(value))
    if info.selection:
        return None if _is_selection(value) else Problem("type", "text like 0,2-4 or a list of integers", repr(value))
    items = value if kind.many else (value,)
    if kind.many and not items:
        return Problem("type", "a non-empty list", repr(value))
    for item in items:
        if isinstance(item, bool) and kind.base is not bool or not isinstance(item, kind.bases):
            words = " or ".join(_WORDS[t] for t in kind.bases)
            expected = f"{words} or a list" if kind.many else words
            return Problem("type", expected, repr(item if kind.many else value))
        if info.min is not None and item < info.min:
            return Problem("min", "a positive integer" if info.min == 1 else f"at least {info.min}", str(item))
        if info.choices is not None and item not in info.choices:
            choices = ", ".join(str(c) for c in info.choices)
            message = info.choice_error.format(value=item, choices=choices) if info.choice_error else None
            return Problem("choice", _one_of(info.choices), repr(item), message)
    return None


def _one_of(choices: tuple[Any, ...]) -> str:
    names = [str(c) for c in choices]
    return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)


def _normalise(f, kind: Kind, value: Any) -> Any:
    """Sequences become tuples (options are frozen); selection numbers become selection text."""
    if kind.many and value is not None:
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    if info_of(f).selection and value is not None and not isinstance(value, str):
        return str(int(value)) if _is_integer(value) else ",".join(str(int(v)) for v in value)
    return value


def from_keywords(cls: type, values: Mapping[str, Any]) -> Any:
    """Options from the Python API's (or the CLI's) keyword arguments; a bad one is an :class:`OptionError`."""
    by_name = {name: f for f in fields(cls) for name in _names(f)}
    chosen: dict[str, Any] = {}
    for key, value in values.items():
        f = by_name.get(key)
        if f is None:
            known = ", ".join(f.name for f in fields(cls))
            raise OptionError(f"unknown option {key!r} (known: {known})")
        if f.name in chosen:
            raise OptionError(f"give {' or '.join(_names(f))}, not both")
        kind = kinds(cls)[f.name]
        if kind.many and isinstance(value, kind.base):
            value = (value,)
        problem = _problem(f, kind, value)
        if problem is not None:
            expected = "a positive number" if problem.expected == "a positive integer" else problem.expected
            raise OptionError(problem.message or f"{_flag(f.name)} must be {expected}, not {problem.shown}")
        chosen[f.name] = _normalise(f, kind, value)
    return cls(**chosen)


def from_mapping(cls: type, data: Any, where: str, source: str, section: str | None = None) -> dict[str, Any]:
    """Check one YAML section ``data`` against the fields of ``cls`` in that ``section``; their values.

    Messages name the field as written in the spec: ``job.yaml: extract.batch_size: expected a
    positive integer, got 0``.
    """
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: {where}: expected a mapping of fields")
    own = {name: f for f in fields(cls) if info_of(f).section == section for name in _names(f)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        f = own.get(key)
        if f is None:
            known = ", ".join(sorted(f.name for f in fields(cls) if info_of(f).section == section))
            raise SpecError(f"{source}: unknown field '{prefix}{key}' (known: {known})")
        if f.name in values:
            raise SpecError(f"{source}: give {prefix}{' or '.join(_names(f))}, not both")
        kind = kinds(cls)[f.name]
        if kind.many and value is not None and not isinstance(value, list | tuple):
            value = (value,)
        problem = _problem(f, kind, value)
        if problem is not None:
            expected = (
                f"an integer of {problem.expected}" if problem.expected.startswith("at least") else problem.expected
            )
            message = problem.message or f"expected {expected}, got {problem.shown}"
            raise SpecError(f"{source}: {prefix}{key}: {message}")
        values[f.name] = _normalise(f, kind, value)
    return values


def sections(cls: type) -> dict[str | None, list[str]]:
    """The fields of ``cls`` by the job-spec section they are written in (None: the dataclass's own)."""
    grouped: dict[str | None, list[str]] = {}
    for f in fields(cls):
        grouped.setdefault(info_of(f).section, []).append(f.name)
    return grouped


# -- the CLI ----------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_parameters(cls: type) -> list[inspect.Parameter]:
    """One typer option per field of ``cls`` (booleans as ``--x/--no-x``, sequences repeatable)."""
    import typer

    parameters = []
    for f in fields(cls):
        info, kind = info_of(f), kinds(cls)[f.name]
        flags = [_flag(name) for name in _names(f)]
        if kind.base is bool:
            flags = [f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:]]
        base: Any = list[str] if kind.many else kind.base  # "2,3" is split and converted by _split_commas
        annotation = base | None if kind.optional or kind.many else base
        default = list(f.default) if kind.many else f.default
        help_text = info.help + (" Repeatable, or comma-separated." if kind.many else "")
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[
                    annotation,
                    typer.Option(
                        *flags, help=help_text, show_default=True, metavar=f.name.upper() if kind.many else None
                    ),
                ],
            )
        )
    return parameters


def _split_commas(kind: Kind, value: Any) -> Any:
    if not kind.many or value is None:
        return value
    parts = [part for item in value for part in str(item).split(",") if part.strip()]
    try:
        return tuple(kind.base(part.strip()) for part in parts)
    except ValueError:
        raise OptionError(f"{', '.join(parts)} is not a list of {_WORDS[kind.base][3:]}s") from None


def cli_command(cls: type, into: str = "options") -> Callable[[Callable], Callable]:
    """Give a typer command the flags of ``cls``; the command receives them as one ``into`` instance.

    The command declares its own arguments as usual plus a keyword ``into`` that is not a flag.
    """

    def decorate(func: Callable) -> Callable:
        own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name != into]
        names = [f.name for f in fields(cls)]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {name: _split_commas(kinds(cls)[name], kwargs.pop(name)) for name in names}
            return func(**kwargs, **{into: from_keywords(cls, given)})

        parameters = [*own, *cli_parameters(cls)]
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def api_signature(cls: type) -> Callable[[Callable], Callable]:
    """Show the fields of ``cls`` as keyword arguments of a function that takes them as ``**options``."""

    def decorate(func: Callable) -> Callable:
        kept = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        named = {p.name for p in kept}
        keyword_only = inspect.Parameter.KEYWORD_ONLY
        options = [
            inspect.Parameter(f.name, keyword_only, default=f.default) for f in fields(cls) if f.name not in named
        ]
        ordered = (
            [p for p in kept if p.kind is not keyword_only] + options + [p for p in kept if p.kind is keyword_only]
        )
        func.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
        return func

    return decorate
