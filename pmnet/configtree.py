"""Generic machinery for typed dataclass config trees: YAML in/out, CLI overrides, coercion, help.

Nothing here knows PMNet; :mod:`pmnet.config` declares the tree and its validation.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key path and the problem."""


class _CliValue(str):
    """A raw string from the command line, parsed according to the target field's type."""


def _is_dataclass_type(tp: Any) -> TypeGuard[type[DataclassInstance]]:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass (its one-line doc)."""
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return docs
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    """A type as a reader writes it: ``int | None``, ``list[StreamConfig]``, ``Literal['a', 'b']``."""
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and not args:
        return tp.__name__
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_cli(raw: str, tp: Any) -> Any:
    """Interpret a command-line string for a field of type ``tp``."""
    if tp is str:
        return str(raw)
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return str(raw)


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (coercing where lossless); raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, _CliValue):
        is_union = origin in (typing.Union, types.UnionType)
        if is_union and type(None) in args and value.strip().lower() in ("null", "none", "~"):
            return None
        inner = [a for a in args if a is not type(None)] if is_union else [tp]
        value = _parse_cli(value, inner[0] if len(inner) == 1 else tp)

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"config key '{path}': {_describe(value)} is not {_type_name(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{path}': {_describe(value)} is not allowed; choose one of {list(args)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{path}': expected a list, got {_describe(value)}")
        (item_tp,) = args or (Any,)
        return [coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a mapping, got {_describe(value)}")
        return dict(value)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key '{path}': expected a mapping of {tp.__name__} fields, got {_describe(value)}"
            )
        return from_dict(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}': expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        raise ConfigError(f"config key '{path}': expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{path}': expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{path}': expected a string, got {_describe(value)}")
    raise ConfigError(f"config key '{path}': unsupported field type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping; unknown keys and wrong types are ConfigErrors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{(path + '.') if path else ''}{close[0]}'?" if close else ""
            where = f"section '{path}'" if path else "the top level"
            raise ConfigError(f"config key '{key_path}': unknown key in {where}{hint}")
        kwargs[key] = coerce(value, hints[key], key_path)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain nested dicts / lists of a dataclass tree (YAML- and JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in ``top`` replaces ``base``."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``include:`` (a path or list, relative to the file) first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}': not found")
    if path.resolve() in _seen:
        raise ConfigError(f"config file '{path}': include cycle")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"config file '{path}': not valid YAML ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': the top level must be a mapping, got {type(data).__name__}")
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"config file '{path}': 'include' must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = deep_merge(merged, read_yaml(path.parent / inc, (*_seen, path.resolve())))
    return deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a raw mapping (values are parsed per target type later)."""
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': expected section.key=value")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a section")
            node[part] = dict(child)
            node = node[part]
        node[parts[-1]] = _CliValue(raw)
    return out


def format_help(cls: type, prefix: str = "") -> str:
    """Every field of the tree with its type, default and doc, one per line."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    default_obj = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            lines.append(f"\n[{name}] {docs.get(f.name, '')}".rstrip())
            lines.append(format_help(tp, name + "."))
        else:
            default = to_dict(getattr(default_obj, f.name))
            lines.append(f"  {name} ({_type_name(tp)}, default {default!r}): {docs.get(f.name, '')}")
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
            if _is_dataclass_type(item):  # the fields of each list entry, e.g. a data stream
                lines.append(format_help(item, f"  {name}[]."))
    return "\n".join(lines)
