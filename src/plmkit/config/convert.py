"""Dataclass configs: build them from YAML + dotted CLI overrides, with errors that name the key.

Every recipe describes its settings as (nested) dataclasses. This module turns plain data into them
and back:

    data = load_yaml("recipes/gpt-clm.yaml")                    # dict (plmkit.config.yaml_io)
    data = apply_overrides(data, ["optim.lr=3e-4"], RecipeConfig)  # dotted keys, values parsed as YAML
    cfg = from_dict(RecipeConfig, data)                            # ConfigError naming "optim.lr" etc.
    to_dict(cfg)                                                   # plain dict, safe for yaml.safe_dump

or all at once with `load_config(RecipeConfig, path, overrides)`. Field types may be Literal choices
and declare numeric ranges (`Annotated[float, Range(ge=0)]`); see plmkit.config.fields for those and
for the one wording of every error.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from plmkit.config.fields import (
    UNSET,
    Range,
    describe,
    field_types,
    init_fields,
    is_dataclass_type,
    join,
    not_one_of,
    strip_optional,
    type_name,
    unknown_key,
)
from plmkit.config.yaml_io import load_yaml, parse_yaml
from plmkit.errors import ConfigError

T = TypeVar("T")

__all__ = ["from_dict", "to_dict", "check_fields", "parse_override", "apply_overrides", "load_config"]


# --------------------------------------------------------------------------- values


def _convert(value: Any, tp: Any, path: str) -> Any:
    """`value` as type `tp`, or ConfigError naming `path` and the expected type."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # Annotated[float, Range(ge=0)]: convert, then check what it declares
        converted = _convert(value, args[0], path)
        for declared in args[1:]:
            if isinstance(declared, Range):
                declared.check(value, path)  # the value as written: "lr=0", not "lr=0.0"
        return converted

    def wrong() -> ConfigError:
        return ConfigError(f'config key "{path}" must be {type_name(tp)}, got {describe(value)}')

    if is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f'config key "{path}" must be a mapping of {tp.__name__} fields, got {describe(value)}'
            )
        return from_dict(tp, value, path=path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members:  # an exact match first, so `int | str` keeps 3 an int
            if isinstance(member, type) and type(value) is member:
                return value
        errors = []
        for member in members:
            try:
                return _convert(value, member, path)
            except ConfigError as exc:
                errors.append(exc)
        structured = typing.get_origin(members[0]) is not None or dataclasses.is_dataclass(members[0])
        if len(errors) == 1 and structured:
            raise errors[0]  # `Model | None`, `list[X] | None`: the error names the key inside
        raise wrong()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # True is not Literal[1]
            return value
        raise not_one_of(value, args, path)
    if origin in (list, set, frozenset) or (origin is tuple and args[-1:] == (Ellipsis,)):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item = args[0] if args else Any
        items = [_convert(v, item, join(path, i)) for i, v in enumerate(value)]
        return items if origin is list else origin(items)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(value) != len(args):
            raise ConfigError(
                f'config key "{path}" must be {type_name(tp)} ({len(args)} items), got {len(value)} items'
            )
        return tuple(_convert(v, a, join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise wrong()
        key_tp, val_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, path): _convert(v, val_tp, join(path, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # `steps: 1e5` means 100000
            return int(value)
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int of 400 digits
                raise wrong() from None
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong()
    if isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise wrong()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        names = {m.value: m for m in tp}
        if value in names:
            return names[value]
        raise not_one_of(value, names, path)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise wrong()
    return value  # an annotation we don't check (TypeVar, Callable, ...)


# --------------------------------------------------------------------------- dataclasses <-> dicts


def check_fields(
    cls: type, data: Mapping[str, Any], *, path: str = "", exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """`data` checked against the init fields of dataclass `cls` (less `exclude`), as converted keyword
    arguments; the instance is not built, so classes that need more than config values (an objective
    needs a tokenizer) are checked before anything is built. Raises ConfigError like `from_dict`."""
    if not isinstance(data, Mapping):
        where = f'config key "{path}"' if path else "config"
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {describe(data)}")
    excluded = set(exclude)
    fields = {name: f for name, f in init_fields(cls).items() if name not in excluded}
    hints = field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(key, path, fields, cls.__name__)
        value = _with_section_defaults(fields[key], value)
        kwargs[key] = _convert(value, hints.get(key, Any), join(path, key))
    return kwargs


def _with_section_defaults(f: dataclasses.Field, value: Any) -> Any:
    """A partial section keeps its config's own defaults: FinetuneConfig's optim defaults to lr 5e-5 and
    weight decay 0.01, so `optim: {lr: 1e-4}` keeps weight decay 0.01, not OptimConfig's 0.1."""
    if not isinstance(value, Mapping) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default) or default == type(default)():
        return value
    return {**to_dict(default), **value}


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses, lists, dicts, Optionals.

    `path` is the dotted position of `data` in a larger config, used in error messages. Raises
    ConfigError for an unknown key (suggesting the closest valid one), a missing required key, a
    value outside a Literal's choices or a declared Range, or a value of the wrong type (ints are
    accepted for floats, integral floats for ints).
    """
    if not is_dataclass_type(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    kwargs = check_fields(cls, data, path=path)
    missing = [
        name
        for name, f in init_fields(cls).items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join(f'"{join(path, m)}"' for m in missing)
        raise ConfigError(f"missing required config key{'s' if len(missing) > 1 else ''} {keys}")
    return cls(**kwargs)


def to_dict(instance: Any) -> Any:
    """A dataclass (or any nesting of dataclasses, lists, tuples, dicts) as plain YAML-safe data.

    Tuples become lists, Paths strings, Enums their values; fields with `init=False` and UNSET fields
    are left out so that `from_dict(type(x), to_dict(x)) == x`.
    """
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {
            f.name: to_dict(getattr(instance, f.name))
            for f in dataclasses.fields(instance)
            if f.init and getattr(instance, f.name) is not UNSET
        }
    if isinstance(instance, Mapping):
        return {to_dict(k): to_dict(v) for k, v in instance.items()}
    if isinstance(instance, (list, tuple, set, frozenset)):
        return [to_dict(v) for v in instance]
    if isinstance(instance, Path):
        return str(instance)
    if isinstance(instance, enum.Enum):
        return to_dict(instance.value)
    return instance


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"a.b.c=value"` -> (["a", "b", "c"], value), the value parsed as YAML.

    So `4` is an int, `1e-3` a float, `true` a bool, `[1, 2]` a list, `null` None, anything else
    a string. A value that is not valid YAML is kept as the raw string.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f'override "{text}" must look like key=value (e.g. optim.lr=3e-4)')
    keys = key.split(".")
    if not key or any(not k.strip() for k in keys):
        raise ConfigError(f'override "{text}" has an empty key; write it like optim.lr=3e-4')
    return [k.strip() for k in keys], _parse_value(raw)


def _parse_value(raw: str) -> Any:
    try:
        return parse_yaml(raw)
    except yaml.YAMLError:
        return raw


def _target_type(cls: type, keys: list[str], override: str) -> Any:
    """The annotation of the dotted `keys` in dataclass `cls`; ConfigError for an unknown key.

    Below a non-dataclass level (a dict or Any field) keys are free-form and the type is Any.
    """
    tp: Any = cls
    path = ""
    for key in keys:
        inner = strip_optional(tp)
        if is_dataclass_type(inner):
            fields = init_fields(inner)
            if key not in fields:
                err = unknown_key(key, path, fields, inner.__name__)
                raise ConfigError(f'override "{override}": {err}')
            tp = field_types(inner).get(key, Any)
        elif typing.get_origin(inner) in (dict, Mapping):
            args = typing.get_args(inner)
            tp = args[1] if args else Any
        elif typing.get_origin(inner) in (list, tuple) and key.isdigit():
            args = typing.get_args(inner)
            tp = args[0] if args else Any
        else:
            return Any
        path = join(path, key)
    return tp


def _is_str_type(tp: Any) -> bool:
    inner = strip_optional(tp)
    return inner is str or (isinstance(inner, type) and issubclass(inner, Path))


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str], cls: type | None = None) -> dict:
    """A copy of `data` with each `"a.b.c=value"` override set (creating nested mappings as needed).

    With `cls` (the dataclass `data` describes), unknown keys are rejected with a suggestion, a
    value for a `str`/`Path` field is kept as the raw text (so `name=007` stays "007"), and scalar
    values are type-checked here so the error names the override rather than the file.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        keys, value = parse_override(override)
        if cls is not None:
            tp = _target_type(cls, keys, override)
            if _is_str_type(tp):  # keep the text as typed; only an Optional field takes null
                raw = override.partition("=")[2]
                optional = type(None) in typing.get_args(tp)
                value = None if optional and raw.strip() in ("null", "~") else raw
            if not is_dataclass_type(strip_optional(tp)):
                key = ".".join(keys)
                try:  # nested dataclass values are checked once merged, by from_dict
                    value = to_dict(_convert(value, tp, key))
                except ConfigError as exc:  # named once: `train.clip_grad=-1 is out of range: ...`
                    text = str(exc)
                    if text.startswith(key) and text[len(key) : len(key) + 1] in ("=", "[", "."):
                        raise
                    raise ConfigError(f'override "{override}": {exc}') from None
        _set_nested(result, keys, value, override)
    return result


def _set_nested(data: dict, keys: list[str], value: Any, override: str) -> None:
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            child = node[int(key)]
            if not isinstance(child, (dict, list)):
                child = node[int(key)] = {}
        elif isinstance(node, dict):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, (dict, list)):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f'override "{override}": "{where}" is a {type(child).__name__}, not a mapping'
                )
        else:
            raise ConfigError(f'override "{override}": cannot index into "{".".join(keys[:depth])}"')
        node = child
    last = keys[-1]
    if isinstance(node, list):
        if not (last.isdigit() and int(last) < len(node)):
            raise ConfigError(
                f'override "{override}": "{".".join(keys[:-1])}" is a list of {len(node)} items; '
                f"use an index 0..{len(node) - 1}"
            )
        node[int(last)] = value
    else:
        node[last] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """`cls` built from the YAML file at `path` (optional) with dotted `overrides` applied."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides), cls)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from None
