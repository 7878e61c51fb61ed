"""Dataclass configs: build them from YAML + dotted CLI overrides, with errors that name the key.

Every recipe describes its settings as (nested) dataclasses. This module turns plain data into them
and back:

    data = load_yaml("recipes/pretrain-gpt.yaml")            # dict, DataError on a bad file
    data = apply_overrides(data, ["optim.lr=3e-4"], RunConfig)  # dotted keys, values parsed as YAML
    cfg = from_dict(RunConfig, data)                          # ConfigError naming "optim.lr" etc.
    to_dict(cfg)                                              # plain dict, safe for yaml.safe_dump

or all at once with `load_config(RunConfig, path, overrides)`.

YAML is read with YAML 1.2 scalars, which is what users expect: `1e-3` is a float (PyYAML's
YAML 1.1 default reads it as a string), `yes`/`no`/`on`/`off` stay strings (only true/false are
booleans), dates stay strings, and a key given twice in one mapping is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from plmkit.errors import ConfigError, DataError, closest_match

T = TypeVar("T")

__all__ = ["from_dict", "to_dict", "load_yaml", "parse_override", "apply_overrides", "load_config"]


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats/booleans, no timestamps and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG, _FLOAT_TAG, _TIMESTAMP_TAG = (f"tag:yaml.org,2002:{t}" for t in ("bool", "float", "timestamp"))
# A float needs a '.' or an exponent (plain digits stay ints); the exponent sign is optional.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+
    |\.(?:inf|Inf|INF))
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def _yaml12_resolvers() -> dict:
    resolvers: dict = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = []
        for tag, regexp in entries:
            if tag == _FLOAT_TAG:
                kept.append((tag, _FLOAT_RE))  # replaced in place: float is tried before int
            elif tag not in (_BOOL_TAG, _TIMESTAMP_TAG):
                kept.append((tag, regexp))
        if first in "tTfF":
            kept.insert(0, (_BOOL_TAG, _BOOL_RE))
        resolvers[first] = kept
    for first in "tTfF":
        resolvers.setdefault(first, [(_BOOL_TAG, _BOOL_RE)])
    return resolvers


_Loader.yaml_implicit_resolvers = _yaml12_resolvers()


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from `path`. DataError names the file (and line) when it can't."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"config path is a directory, not a YAML file: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise DataError(f"{where}: invalid YAML: {problem}") from None
    if data is None:  # an empty file is an empty config
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be a mapping of keys, got a {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- types


def _type_name(tp: Any) -> str:
    """A readable name for an annotation: 'int', 'list[Stage]', 'float | None', "'a' | 'b'"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (files use `from __future__ import annotations`)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # e.g. a name imported only under TYPE_CHECKING: resolve field by field
        import sys

        namespace = vars(sys.modules.get(cls.__module__, object()))
        hints = {}
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
            except Exception:
                hints[f.name] = Any
        return hints


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _strip_optional(tp: Any) -> Any:
    """`X | None` -> X (the type to descend into for dotted keys); anything else unchanged."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _convert(value: Any, tp: Any, path: str) -> Any:
    """`value` as type `tp`, or ConfigError naming `path` and the expected type."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong() -> ConfigError:
        return ConfigError(f'config key "{path}" must be {_type_name(tp)}, got {_describe(value)}')

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f'config key "{path}" must be a mapping of {tp.__name__} fields, got {_describe(value)}'
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
        hint = ""
        if isinstance(value, str):
            best = closest_match(value, [a for a in args if isinstance(a, str)])
            hint = f' (did you mean "{best}"?)' if best else ""
        raise ConfigError(f'config key "{path}" must be one of {_type_name(tp)}, got {value!r}{hint}')
    if origin in (list, set, frozenset) or (origin is tuple and args[-1:] == (Ellipsis,)):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item = args[0] if args else Any
        items = [_convert(v, item, _join(path, i)) for i, v in enumerate(value)]
        return items if origin is list else origin(items)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(value) != len(args):
            raise ConfigError(
                f'config key "{path}" must be {_type_name(tp)} ({len(args)} items), got {len(value)} items'
            )
        return tuple(_convert(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise wrong()
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, path): _convert(v, val_tp, _join(path, k)) for k, v in value.items()
        }
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
            return float(value)
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
        raise ConfigError(
            f'config key "{path}" must be one of {", ".join(repr(v) for v in names)}, got {value!r}'
        )
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise wrong()
    return value  # an annotation we don't check (TypeVar, Callable, ...)


# --------------------------------------------------------------------------- dataclasses <-> dicts


def _unknown_key(key: Any, path: str, cls: type, valid: Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    prefix = f"{path}." if path else ""
    best = closest_match(str(key), valid)
    if best:
        hint = f' (did you mean "{prefix}{best}"?)'
    else:
        hint = f"; valid keys: {', '.join(valid)}" if valid else f"; {cls.__name__} takes no keys"
    return ConfigError(f'unknown config key "{_join(path, key)}"{hint}')


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses, lists, dicts, Optionals.

    `path` is the dotted position of `data` in a larger config, used in error messages. Raises
    ConfigError for an unknown key (suggesting the closest valid one), a missing required key, or a
    value of the wrong type (ints are accepted for floats, integral floats for ints).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        where = f'config key "{path}"' if path else "config"
        raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {_describe(data)}")
    fields = _init_fields(cls)
    hints = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, path, cls, fields)
        kwargs[key] = _convert(value, hints.get(key, Any), _join(path, key))
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join(f'"{_join(path, m)}"' for m in missing)
        raise ConfigError(f"missing required config key{'s' if len(missing) > 1 else ''} {keys}")
    return cls(**kwargs)


def to_dict(instance: Any) -> Any:
    """A dataclass (or any nesting of dataclasses, lists, tuples, dicts) as plain YAML-safe data.

    Tuples become lists, Paths strings, Enums their values; fields with `init=False` are left out so
    that `from_dict(type(x), to_dict(x)) == x`.
    """
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {
            f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance) if f.init
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
        return _parse_yaml(raw)
    except yaml.YAMLError:
        return raw


def _target_type(cls: type, keys: list[str], override: str) -> Any:
    """The annotation of the dotted `keys` in dataclass `cls`; ConfigError for an unknown key.

    Below a non-dataclass level (a dict or Any field) keys are free-form and the type is Any.
    """
    tp: Any = cls
    path = ""
    for key in keys:
        inner = _strip_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            fields = _init_fields(inner)
            if key not in fields:
                err = _unknown_key(key, path, inner, fields)
                raise ConfigError(f'override "{override}": {err}')
            tp = _field_types(inner).get(key, Any)
        elif typing.get_origin(inner) in (dict, Mapping):
            args = typing.get_args(inner)
            tp = args[1] if args else Any
        elif typing.get_origin(inner) in (list, tuple) and key.isdigit():
            args = typing.get_args(inner)
            tp = args[0] if args else Any
        else:
            return Any
        path = _join(path, key)
    return tp


def _is_str_type(tp: Any) -> bool:
    inner = _strip_optional(tp)
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
                optional = _strip_optional(tp) is not tp
                value = None if optional and raw.strip() in ("null", "~") else raw
            inner = _strip_optional(tp)
            if not (dataclasses.is_dataclass(inner) and isinstance(inner, type)):
                try:  # nested dataclass values are checked once merged, by from_dict
                    value = to_dict(_convert(value, tp, ".".join(keys)))
                except ConfigError as exc:
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
