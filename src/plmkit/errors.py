"""User-facing errors.

Every mistake a user can make (a bad path, a bad config key, a tensor of the wrong shape) raises a
`PlmkitError` subclass whose message says what is wrong, where, and how to fix it. The `plm` CLI
prints such errors as one line `error: <message>` and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlmkitError(Exception):
    """Base class of all user-facing errors (CLI exit code 2)."""

    exit_code = 2


class ConfigError(PlmkitError):
    """An invalid configuration: unknown key, wrong type, impossible combination of values."""


class ShapeError(PlmkitError):
    """A tensor of the wrong shape, length or value range (e.g. token id >= vocab size)."""


class DataError(PlmkitError):
    """Unreadable or malformed input data: missing file, bad encoding, malformed line."""


class CheckpointError(PlmkitError):
    """A checkpoint that is missing, truncated, or belongs to another architecture."""


class OutputError(ConfigError):
    """An output folder that must not or cannot be written: an input of the command, an existing
    checkpoint or non-empty folder (without --overwrite), a path under a regular file."""


class DiskFullError(PlmkitError):
    """The disk (or the file size limit) ran out while writing; nothing half-written was left behind."""


def closest_match(name: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to `name`, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean "x"?)' suffix for error messages, or '' when nothing is close."""
    best = closest_match(name, choices)
    return f' (did you mean "{best}"?)' if best else ""
