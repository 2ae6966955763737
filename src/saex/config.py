"""Dataclass configs whose field docstrings double as CLI help and are saved in every manifest.

A config is a plain dataclass; the string literal under each field is its documentation. ``add_arguments``
turns one into argparse options (``--context-length``), ``from_namespace`` reads them back, and
``config_dict`` gives the JSON-ready dict that manifests record.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import tomllib
import types
import typing
from functools import cache
from pathlib import Path

from saex.errors import SaexError


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (and from the dataclasses it
    inherits fields from, e.g. ``store.reader.RowOptions``)."""
    docs = {}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            docs = field_docs(base) | docs
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
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


def _base_type(tp):
    """``int | None`` -> (int, True); ``str`` -> (str, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = ()) -> None:
    """One option per field. Options not given stay out of the namespace (SUPPRESS), so that a config
    file or a replayed run can supply them and the command line overrides only what it names."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        help_text = docs.get(f.name, "")
        if tp is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text + f" (default: {default})",
            )
            continue
        kwargs = {
            "dest": f.name,
            "help": help_text + (f" (default: {default})" if default is not None else ""),
            "metavar": f.name.upper(),
        }
        if tp in (int, float, str):
            kwargs["type"] = tp
        kwargs["default"] = argparse.SUPPRESS
        if f.name in required:
            kwargs["required"] = True
        parser.add_argument(flag, **kwargs)


def from_namespace(cls: type, ns: argparse.Namespace, base: dict | None = None):
    """The config: dataclass defaults, overridden by ``base`` (a file), overridden by the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(base or {})
    values.update({k: v for k, v in vars(ns).items() if k in names})
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


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
