"""Typed dataclass configs: build from dicts/YAML with key checking, dotted CLI overrides, dump back.

Every error names the offending key path and what would have been accepted, so a typo in a YAML file is a one
line message rather than a ``TypeError`` from a constructor. Wherever a config file is read, a shipped config name
(``demo``, ``paper-moe-qwen3-1.7b``: the YAML files in ``audiomoe/configs``, see ``audiomoe config list``) works
as well as a path.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
SHIPPED_DIR = Path(__file__).parent / "configs"  # package data: installed with the package


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key and the fix."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML / CLI) to the annotated type ``tp``; raise ConfigError otherwise."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp) or (Any, ...)
        if origin is tuple and args[-1] is not Ellipsis:  # a fixed-shape tuple: one type per position
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
        items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking that every key exists and every value has the right type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        hints_text = "".join(did_you_mean(k, fields) for k in unknown)
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}{hints_text}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass, suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """``" (did you mean 'lr'?)"`` for the closest of ``options``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_override_keys(cls: type, overrides: list[str]) -> None:
    """Every dotted key of ``overrides`` must name a field of ``cls`` (walking nested dataclass sections; below a
    free-form dict field anything goes). The error blames the command line, not the config file, and suggests the
    closest key: ``override 'optim.lrr=1e-3' (command line): no key 'lrr' in optim (did you mean 'lr'?)``."""
    for text in overrides:
        path, _ = parse_override(text)
        node: Any = cls
        for depth, part in enumerate(path):
            if not _is_dataclass_type(node):
                break  # a dict / list / scalar-typed field: its contents are free-form
            fields = {f.name: f for f in dataclasses.fields(node) if f.init}
            if part not in fields:
                section = ".".join(path[:depth]) or node.__name__
                raise ConfigError(
                    f"override {text!r} (command line): no key {part!r} in {section}{did_you_mean(part, fields)}; "
                    f"keys there: {', '.join(sorted(fields))}"
                )
            node = _section_type(get_type_hints(node)[part])


def _section_type(tp: Any) -> Any:
    """The dataclass inside an ``X | None`` annotation, or the annotation itself."""
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) in (Union, types.UnionType) and len(args) == 1 else tp


def add_override_arguments(parser: argparse.ArgumentParser, what: str = "config") -> None:
    """The one override style of every command: positional ``key=value`` pairs, with ``--set key=value`` accepted
    as an alias (repeatable). Read them back with :func:`overrides_of`."""
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"dotted {what} overrides, e.g. a.b=1"
    )
    parser.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="same as KEY=VALUE",
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """Positional overrides then ``--set`` ones, in order (a later one wins)."""
    return [*getattr(args, "overrides", []), *getattr(args, "set_overrides", [])]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4). The value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); quote it") from None
    return key.split("."), value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The one config merge: nested dicts merge key by key, any other value in ``extra`` replaces the base value.
    Returns a new dict; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else copy.deepcopy(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested dict (a copy is returned). An override assigns: a mapping
    value replaces the section (``model.adapter={type: moe}``), it is not merged into it."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def shipped_configs() -> dict[str, Path]:
    """Name (file stem) -> path of every config shipped with the package."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file: the path if it exists, else the shipped config of that name (``demo`` or ``demo.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix in (".yaml", ".yml") and path.parent == Path(".") else str(name_or_path)
    if name in shipped:
        return shipped[name]
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped config; shipped: {', '.join(shipped)} "
        "(audiomoe config list)"
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_config(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> typed ``cls``."""
    check_override_keys(cls, overrides or [])  # a typo on the command line is blamed there, not on the file
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        # a bad value that an override set is the command line's fault, not the file's
        culprit = next(
            (o for o in reversed(overrides or []) if str(err).startswith(o.split("=", 1)[0] + ":")), None
        )
        if culprit is not None:
            raise ConfigError(f"override {culprit!r} (command line): {err}") from None
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
