"""Typed dataclass configs: one declaration per option, turned into CLI options, checks, files and manifests.

A config is a dataclass deriving from ``Config``; the string literal under each field is its documentation
(CLI help, ``docs/``, every manifest). Field types say what a value is: ``int``, ``float``, ``str``,
``bool``, ``X | None``, ``list[float]`` / ``list[int]`` / ``list[str]`` and ``Literal[...]`` choices. Range
and choice checks are declared once, on the field, with ``opt`` (``steps: int = opt(10_000, gt=0)``), and run
when the config is made, from Python or the command line alike. Values given as text (the command line, a
``--set`` override, a manifest written before lists were lists) are converted by the field's type: a list
field takes ``"1e-4,8.6e-4"`` as ``[1e-4, 8.6e-4]``.

``add_arguments`` turns a config class into argparse options (``--context-length``; fields marked
``positional`` become positional arguments), ``from_namespace`` reads them back, ``load_config_file`` reads a
``--config`` file or a saved manifest, and ``config_dict`` gives the JSON-ready dict that manifests record.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import math
import os
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

from saex.errors import SaexError


@dataclass(frozen=True)
class Check:
    """What a field's value must satisfy (each list item, for a list field)."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    """Allowed values beyond the type's ``Literal`` (a callable is asked when checking: e.g. a registry)."""
    nonempty: bool = False
    """A list field must hold at least one item."""
    label: str | None = None
    """How the message names the value (default: its option, ``--name``)."""
    hint: str = ""
    """Appended to the message: what the value is for, or what is allowed beyond the range."""


def opt(
    default: Any = dataclasses.MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    nonempty: bool = False,
    label: str | None = None,
    hint: str = "",
    positional: bool = False,
) -> Any:
    """A config field with its checks (see ``Check``). A list default is copied for every instance."""
    check = Check(gt, ge, le, lt, choices, nonempty, label, hint)
    meta = {"check": check, "positional": positional}
    if isinstance(default, list):
        items = tuple(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (and from the dataclasses it
    inherits fields from, e.g. ``store.reader.RowOptions``)."""
    docs: dict[str, str] = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            docs = field_docs(base) | docs
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag(name: str) -> str:
    """The option of a field: ``context_length`` -> ``--context-length``."""
    return "--" + name.replace("_", "-")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``str`` -> (str, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(kind: Any, value: Any, name: str) -> Any:
    """One value of type ``kind`` (int, float, str, bool or a Literal), from itself or from text."""
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise SaexError(f"unknown {flag(name)} {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SaexError(f"{flag(name)} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise SaexError(f"{flag(name)} must be an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            with contextlib.suppress(ValueError):
                return int(value)
        raise SaexError(f"{flag(name)} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise SaexError(f"{flag(name)} must be a number, got {value!r}")
        if isinstance(value, (int, float, str)):
            with contextlib.suppress(ValueError):
                return float(value)
        raise SaexError(f"{flag(name)} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, (str, os.PathLike)) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(value)  # a path given from Python, or a number where the option is text
        raise SaexError(f"{flag(name)} must be text, got {value!r}")
    return value


def convert(tp: Any, value: Any, name: str) -> Any:
    """``value`` as the field type ``tp`` says; text for a list is comma-separated."""
    kind, optional = _unwrap(tp)
    if value is None:
        if optional:
            return None
        raise SaexError(f"{flag(name)} needs a value")
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        given = value
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise SaexError(f"{flag(name)} must be a list, got {given!r}")
        try:
            return [_scalar(item, v, name) for v in value]
        except SaexError:
            if item in (int, float):
                what = "integers" if item is int else "numbers"
                raise SaexError(f"{flag(name)} must be comma-separated {what}, got {given!r}") from None
            raise
    return _scalar(kind, value, name)


def _check_value(name: str, value: Any, check: Check) -> None:
    what = check.label or flag(name)
    hint = f" {check.hint}" if check.hint else ""
    if isinstance(value, float) and not math.isfinite(value):
        raise SaexError(f"{what} must be finite, got {value}{hint}")
    if check.choices is not None:
        allowed = check.choices() if callable(check.choices) else check.choices
        if value not in allowed:
            raise SaexError(f"unknown {flag(name)} {value!r}; allowed: {', '.join(allowed)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if check.gt is not None and not value > check.gt:
            rule = "positive" if check.gt == 0 else f"> {check.gt:g}"
            raise SaexError(f"{what} must be {rule}, got {value}{hint}")
        if check.ge is not None and not value >= check.ge:
            raise SaexError(f"{what} must be >= {check.ge:g}, got {value}{hint}")
        if check.lt is not None and not value < check.lt:
            raise SaexError(f"{what} must be < {check.lt:g}, got {value}{hint}")
        if check.le is not None and not value <= check.le:
            raise SaexError(f"{what} must be <= {check.le:g}, got {value}{hint}")


def check_config(cfg: Any) -> None:
    """Convert every field of ``cfg`` to its declared type and run its declared checks, in place."""
    hints = _hints(cast(type, type(cfg)))
    for f in dataclasses.fields(cfg):
        value = convert(hints[f.name], getattr(cfg, f.name), f.name)
        object.__setattr__(cfg, f.name, value)
        check = f.metadata.get("check")
        if check is None or value is None:
            continue
        if isinstance(value, list):
            if check.nonempty and not value:
                raise SaexError(f"{check.label or flag(f.name)} is empty")
            for v in value:
                _check_value(f.name, v, check)
        elif check.nonempty and isinstance(value, str) and not value.strip():
            raise SaexError(f"{check.label or flag(f.name)} is empty")
        else:
            _check_value(f.name, value, check)


@dataclass
class Config:
    """Base of every saex config: fields are converted and checked when an instance is made."""

    def __post_init__(self) -> None:
        check_config(self)


def _help(cls: type, f: dataclasses.Field) -> str:
    text = field_docs(cls).get(f.name, "")
    kind, _ = _unwrap(_hints(cls)[f.name])
    choices = [str(c) for c in typing.get_args(kind)] if typing.get_origin(kind) is Literal else []
    if choices and not all(c in text for c in choices):  # unless the docstring names them already
        text += f" (one of: {', '.join(choices)})"
    default = None if f.default is dataclasses.MISSING else f.default
    if f.default_factory is not dataclasses.MISSING:
        default = ",".join(map(str, f.default_factory()))
    if default is not None and default != "":
        text += f" (default: {default})"
    return text


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field. Options not given stay out of the namespace (SUPPRESS), so that a config
    file or a replayed run can supply them and the command line overrides only what it names."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        kind, _ = _unwrap(hints[f.name])
        help_text = _help(cls, f)
        if f.metadata.get("positional"):
            parser.add_argument(f.name, help=help_text, metavar=f.name.upper())
            continue
        if kind is bool:
            parser.add_argument(
                flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "metavar": f.name.upper()}
        if kind in (int, float):
            kwargs["type"] = kind
        parser.add_argument(flag(f.name), default=argparse.SUPPRESS, **kwargs)


def to_arguments(cfg: Any) -> list[str]:
    """The command-line options that make ``cfg`` (the inverse of ``add_arguments`` + ``from_namespace``):
    lists comma-separated, booleans as ``--x`` / ``--no-x``, None left to the default."""
    args: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        args += [text] if f.metadata.get("positional") else [f"{flag(f.name)}={text}"]
    return args


def from_namespace(cls: type, ns: argparse.Namespace, base: dict | None = None) -> Any:
    """The config: dataclass defaults, overridden by ``base`` (a file), overridden by the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(base or {})
    values.update({k: v for k, v in vars(ns).items() if k in names})
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:  # an option without a default, given neither on the command line nor in a --config file
        raise SaexError(f"{', '.join(flag(m) for m in missing)} is required")
    return cls(**values)


def load_config_file(cls: type, path: str | Path) -> dict:
    """Field values from a .json or .toml file; a saved run's ``run.json`` (its ``config`` key) works too."""
    path = Path(path)
    if not path.is_file():
        raise SaexError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise SaexError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise SaexError(f"config file {path} must hold an object of option values")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SaexError(f"config file {path} has unknown option {unknown[0]!r}; valid options: {sorted(names)}")
    return data


def typed_values(cls: type, values: dict) -> dict:
    """``values`` with each field of ``cls`` converted to its declared type, as far as it converts (a manifest
    written before a field became a list, ``"0.01,0.02"``, then compares equal to one written after), and each
    field it lacks set to its default (a manifest written before the field existed)."""
    hints = _hints(cls)
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name in out:  # a value that does not convert is left as it was: the comparison names it
            with contextlib.suppress(SaexError):
                out[f.name] = convert(hints[f.name], out[f.name], f.name)
        elif f.default is not dataclasses.MISSING:
            # A field added after the manifest was written: its default is what that version did.
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def recorded_identity(cls: type, recorded: dict, asked: dict) -> dict:
    """A manifest's recorded identity made comparable with the ``asked`` one: ``typed_values``, keeping the
    defaults it fills in only for keys the asked identity has (it leaves some fields out, e.g. ``out``)."""
    return {k: v for k, v in typed_values(cls, recorded).items() if k in recorded or k in asked}


def config_dict(cfg: Any) -> dict:
    """The JSON-ready dict of a config, as manifests record it."""
    return dataclasses.asdict(cfg)
