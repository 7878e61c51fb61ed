"""Text sources: turn files, folders and globs into a stream of documents.

    spec = SourceSpec("corpus/wiki/", weight=3)          # a folder: every known file under it, sorted
    for doc in iter_documents(spec):                      # Document(text, where="corpus/wiki/a.txt:12")
        ...

Formats (chosen from the file suffix, or `SourceSpec.format` for odd names), each also as `.gz`:
- `.txt`: a document per line; with `blank_line_documents=True` a document per blank-line-separated
  paragraph (its lines joined by "\\n"). Blank (whitespace-only) lines are separators, never documents
  and never errors. Only the line ending is removed; other whitespace is kept as written.
- `.jsonl`: one JSON object per line, text in `text_field` (blank lines allowed).
- `.json`: a list of objects, or an object with exactly one list of objects (e.g. {"data": [...]}).
- `.csv` / `.tsv`: a header row naming the `text_field` column (`.tsv` does not treat quotes specially).
- `.parquet`: the `text_field` column (needs pyarrow: `pip install 'plmkit[parquet]'`).
Any other suffix (WikiText's `.raw`, none at all) is an error that names the file and the `format:` to
set: plmkit does not guess, since a wrong guess would train on the wrong documents without a word.

Bad input (malformed JSON, a missing field, invalid UTF-8, a file without documents) raises a
DataError "file:line: what; how to fix" by default. With `on_error="skip"` it is skipped and counted
in a SkipReport instead, whose summary the caller prints. A path that does not exist, or a folder or
glob without data files, is always an error: it is a mistake in the configuration, not in the data.
Records with an empty text field are kept as (empty) documents: they are data, not errors.
"""

from __future__ import annotations

import glob
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.data.formats import FORMATS, Document, ErrorPolicy, file_format, read_file
from plmkit.errors import ConfigError, DataError, did_you_mean

_GLOB_CHARS = set("*?[")


@dataclass
class SourceSpec:
    """Where a corpus lives and how to read it. `weight` is its share in a mixture (see mixture.py)."""

    path: str
    weight: Annotated[float, Range(gt=0)] = 1.0  # its share of the mixture
    text_field: str = "text"  # JSON key / CSV column / parquet column holding the text
    format: str | None = None  # one of FORMATS; None: from each file's suffix
    on_error: Literal["raise", "skip"] = "raise"
    blank_line_documents: bool = False  # .txt only: paragraphs instead of lines are documents

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(f"source {self.path}: weight must be a positive number, got {self.weight!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(
                f'source {self.path}: on_error must be "raise" or "skip", got {self.on_error!r}'
            )
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(
                f"source {self.path}: unknown format {self.format!r}"
                f"{did_you_mean(self.format, FORMATS)}; known: {', '.join(FORMATS)}"
            )


@dataclass
class SkipReport:
    """What on_error="skip" skipped: a count per reason and the first few locations of each."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)
    keep: int = 3  # locations remembered per reason

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        locations = self.first.setdefault(reason, [])
        if len(locations) < self.keep:
            locations.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def lines(self) -> list[str]:
        """One line per reason, e.g. 'skipped 3 × malformed JSON (first at x.jsonl:7, x.jsonl:9, ...)'."""
        out = []
        for reason, n in self.counts.items():
            where = ", ".join(self.first[reason]) + (", ..." if n > len(self.first[reason]) else "")
            out.append(f"skipped {n} × {reason} (first at {where})")
        return out

    def __str__(self) -> str:
        return "; ".join(self.lines()) if self else "nothing skipped"

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "first": {k: list(v) for k, v in self.first.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkipReport:
        return cls(
            counts=dict(d.get("counts", {})), first={k: list(v) for k, v in d.get("first", {}).items()}
        )


def resolve_files(spec: SourceSpec) -> list[Path]:
    """The data files of a source: the file itself, a folder's known files (recursive) or a glob's."""
    path = Path(spec.path).expanduser()
    if _GLOB_CHARS & set(spec.path):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec.path}: the glob matches no files; check the pattern")
    elif path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not _hidden(p, path) and file_format(p) is not None
        )
        if not files:
            others = sorted(p.name for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
            raise DataError(
                f"{spec.path}: the folder has no data files (suffixes: "
                f"{', '.join('.' + f for f in FORMATS)}, optionally + .gz)"
                + (
                    f"; it has {len(others)} file(s) of other types ({', '.join(others[:3])}"
                    f"{', ...' if len(others) > 3 else ''}): give a file or glob as the path and set "
                    "format: (e.g. format: txt)"
                    if others
                    else ""
                )
            )
        return files
    elif path.is_file():
        files = [path]
    else:
        raise DataError(
            f"{spec.path}: no such file or folder; check the path (relative paths are "
            f"relative to the working directory {Path.cwd()})"
        )
    for f in files:
        if file_format(f, spec.format) is None:
            raise DataError(unknown_type_message(f, spec))
    return files


def unknown_type_message(path: Path, spec: SourceSpec) -> str:
    """Why `path` cannot be read, and the `format:` key that says what it is."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = f'".{name.rsplit(".", 1)[-1]}"' if "." in name else "(no suffix)"
    return (
        f"{path}: unknown file type {suffix}; set format: in its source, e.g. "
        f"{{path: {spec.path}, format: txt}} for plain text (one document per line); formats: "
        f"{', '.join(FORMATS)} (else chosen by the suffix .txt, .jsonl, ..., optionally + .gz)"
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def iter_documents(
    spec: SourceSpec | str | Path,
    skipped: SkipReport | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Document]:
    """Every document of a source, in file order. Bad input raises DataError or is counted in `skipped`.

    With on_error="skip" and no `skipped` report given, a summary is issued as a warning at the end.
    `progress(n)` is called now and then with the number of bytes read since its last call
    (compressed bytes for .gz files), for progress bars.
    """
    if not isinstance(spec, SourceSpec):
        spec = SourceSpec(str(spec))
    report = skipped if skipped is not None else SkipReport()
    policy = ErrorPolicy(spec.on_error, report)
    for path in resolve_files(spec):
        yield from read_file(path, spec, policy, progress or (lambda n: None))
    if skipped is None and report:
        warnings.warn(f"{spec.path}: {report}")
