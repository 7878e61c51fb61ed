"""Reading YAML config files: a mapping of keys, with errors that name the file and line.

YAML is read with YAML 1.2 scalars, which is what users expect: `1e-3` is a float (PyYAML's
YAML 1.1 default reads it as a string), `yes`/`no`/`on`/`off` stay strings (only true/false are
booleans), dates stay strings, and a key given twice in one mapping is an error.

    data = load_yaml("recipes/gpt-clm.yaml")   # dict; DataError on a bad file
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from plmkit.errors import DataError

__all__ = ["load_yaml", "parse_yaml"]


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


def parse_yaml(text: str) -> Any:
    """One YAML document read with YAML 1.2 scalars (see the module docstring)."""
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
        data = parse_yaml(text)
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
