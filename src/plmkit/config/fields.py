"""The vocabulary of typed configs: field types, declared ranges, the unset marker, one error format.

A config field is a dataclass field with a type hint. Beside the plain types, two declarations are
checked when a config is built from data (plmkit.config.from_dict):

    kind: Literal["linear", "cosine"] = "cosine"        # a closed set of values
    lr: Annotated[float, Range(gt=0)] = 3e-4             # a numeric range

and every mistake is worded the same way, naming the dotted key and the closest valid choice:

    unknown config key "model.n_layers" (did you mean "model.n_layer"?)
    schedule.kind="cosin" is not one of linear, cosine, constant, wsd (did you mean "cosine"?)
    optim.lr=-1 is out of range: must be > 0
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from plmkit.errors import ConfigError, closest_match


@dataclass(frozen=True)
class Range:
    """A numeric range declared on a field: `Annotated[float, Range(ge=0, le=1)]`.

    `off` is the one spelling that switches the feature off (or picks the default), as written in YAML,
    and `means` what it does: `Range(gt=0, off="null", means="no clipping")` on a `float | None` field,
    `Range(ge=0, off="0", means="no warmup")` where 0 is inside the range. NaN and infinities are never
    in a range (a run with `lr: .inf` only prints nan)."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    off: str | None = None  # the one "off" / default spelling, e.g. "null" or "0"
    means: str = ""  # what `off` does, e.g. "no clipping"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def bounds(self) -> str:
        """'> 0', '>= 0 and < 1', 'any number': the range in words (the range column of the reference)."""
        parts = [
            f"{op} {_number(bound)}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        return " and ".join(parts) or "any number"

    def describe(self) -> str:
        """'> 0, or null for no clipping', '>= 0 (0: no warmup)': the range and its off spelling."""
        if self.off is None:
            return self.bounds()
        if self.off == "null":
            return f"{self.bounds()}, or null for {self.means}"
        return f"{self.bounds()} ({self.off}: {self.means})"

    def error(self, value: Any, path: str) -> ConfigError:
        """The one wording: `train.clip_grad=-1 is out of range: must be > 0, or null for no clipping`."""
        return ConfigError(f"{path}={_shown(value)} is out of range: must be {self.describe()}")

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self.contains(value):
            raise self.error(value, path)

    def option(self, kind: type = int, name: str = "") -> Callable[[str], Any]:
        """An argparse `type=` for a command-line option with this range: `--batch-size 0` fails with
        the wording of the recipe keys (`--batch-size=0 is out of range: must be >= 1`). The errors are
        ConfigErrors, which plmkit.cli prints as its one `error:` line. An option is off by leaving it
        out, so a null "off" is not offered."""
        declared = dataclasses.replace(self, off=None) if self.off == "null" else self

        def parse(text: str) -> Any:
            try:
                value = kind(text)
            except (ValueError, OverflowError):
                noun = "a whole number" if kind is int else "a number"
                raise ConfigError(f"{name}={show(text)} must be {noun} {declared.describe()}") from None
            declared.check(value, name)
            return value

        parse.__name__ = kind.__name__  # argparse names the type in its own messages
        parse.range = declared  # type: ignore[attr-defined]  # for the reference (docs/recipe-reference.md)
        return parse


def _shown(value: Any) -> str:
    """A value in a range error: as written (`-1`, `0.5`, `nan`), long text shortened."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(int(value)) if float(value).is_integer() else str(value)


class _Unset:
    """The value of an optional section field the config did not give (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def given_fields(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that are not UNSET, as a dict (shallow)."""
    return {
        f.name: getattr(instance, f.name)
        for f in dataclasses.fields(instance)
        if getattr(instance, f.name) is not UNSET
    }


# --------------------------------------------------------------------------- messages


def show(value: Any) -> str:
    """A value as it appears in messages: strings in double quotes, everything else as repr."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def unknown_key(key: Any, path: str, valid: Iterable[str], owner: str = "") -> ConfigError:
    """The one error for a key that is not a field: the closest valid key, else the list of keys."""
    valid = sorted(valid)
    prefix = f"{path}." if path else ""
    best = closest_match(str(key), valid)
    if best:
        hint = f' (did you mean "{prefix}{best}"?)'
    else:
        hint = f"; valid keys: {', '.join(valid)}" if valid else f"; {owner or path or 'it'} takes no keys"
    return ConfigError(f'unknown config key "{join(path, key)}"{hint}')


def not_one_of(value: Any, choices: Iterable[Any], path: str) -> ConfigError:
    """The one error for a value outside a Literal's choices."""
    choices = list(choices)
    hint = ""
    if isinstance(value, str):
        best = closest_match(value, [c for c in choices if isinstance(c, str)])
        hint = f' (did you mean "{best}"?)' if best else ""
    listed = ", ".join(str(c) for c in choices)
    return ConfigError(f"{path}={show(value)} is not one of {listed}{hint}")


# --------------------------------------------------------------------------- annotations


def type_name(tp: Any) -> str:
    """A readable name for an annotation: 'int', 'list[Stage]', 'float | None', "'a' | 'b'"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass, Annotated kept (files use `from __future__ import annotations`)."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # e.g. a name imported only under TYPE_CHECKING: resolve field by field
        namespace = vars(sys.modules.get(cls.__module__, object()))
        hints = {}
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
            except Exception:
                hints[f.name] = Any
        return hints


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def strip_optional(tp: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` -> X (the type to descend into for dotted keys)."""
    if typing.get_origin(tp) is Annotated:
        return strip_optional(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return strip_optional(args[0])
    return tp


def is_dataclass_type(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def declared_ranges(tp: Any) -> list[Range]:
    """The Ranges an annotation declares (inside Optional too)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return [a for a in args[1:] if isinstance(a, Range)]
    if origin in (Union, types.UnionType):
        return [r for a in args for r in declared_ranges(a)]
    return []


def check_ranges(instance: Any, where: str = "") -> None:
    """The Ranges declared on a dataclass instance's fields, for instances built in code rather than by
    plmkit.config.from_dict (which checks them while converting); `where` prefixes the field name."""
    hints = field_types(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        for declared in declared_ranges(hints.get(f.name)):
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}{f.name}={value!r} must be a number {declared.describe()}")
            declared.check(value, f"{where}{f.name}")


def numeric_fields(cls: type, path: str = "") -> Iterable[tuple[str, Any, Any, list[Range]]]:
    """(dotted key, annotation, default, declared Ranges) of every numeric field of dataclass `cls`, nested
    dataclasses and lists of them included (`data.sources[].weight`): the rows of the recipe reference
    (docs/recipe-reference.md) and what tests check has a range."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints.get(f.name, Any), join(path, f.name)
        inner = strip_optional(tp)
        if typing.get_origin(inner) is list and is_dataclass_type(strip_optional(typing.get_args(inner)[0])):
            yield from numeric_fields(strip_optional(typing.get_args(inner)[0]), f"{key}[]")
        elif is_dataclass_type(inner):
            yield from numeric_fields(inner, key)
        elif _is_numeric(tp):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            yield (
                key,
                tp,
                default,
                declared_ranges(tp) or [r for a in typing.get_args(inner) for r in declared_ranges(a)],
            )


def _is_numeric(tp: Any) -> bool:
    inner = strip_optional(tp)
    if typing.get_origin(inner) in (tuple, list):
        return any(_is_numeric(a) for a in typing.get_args(inner) if a is not Ellipsis)
    return inner in (int, float)
