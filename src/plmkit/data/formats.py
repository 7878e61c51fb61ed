"""Readers of each file format, behind `sources.iter_documents` (see sources.py for the formats).

Each reader yields Documents and reports bad input through an ErrorPolicy, which raises a DataError
("file:line: what; how to fix") or counts it in a SkipReport. Lines are read as bytes and decoded
one by one, so invalid UTF-8 is reported with its line number. The line, JSON, CSV and parquet helpers
(`read_lines`, `jsonl_values`, `load_json`, `json_records`, `csv_rows`, `parquet_file`) also read the
task data of fine-tuning (data/tasks/rows.py).
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from plmkit.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from plmkit.data.sources import SkipReport, SourceSpec

FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "parquet")
_PROGRESS_EVERY = 256  # lines between progress callbacks (a tell() per line would cost a syscall)


@dataclass
class Document:
    text: str
    where: str  # "file:line" (or "file: item 3", "file: row 7") for messages


class ErrorPolicy:
    """Raise or skip-and-count: every reader reports bad input through `bad`.

    `skip_key` is how the message spells the setting that skips instead (task data: data.on_error=skip)."""

    def __init__(self, on_error: str, report: SkipReport, skip_key: str = "on_error: skip"):
        self.on_error, self.report, self.skip_key = on_error, report, skip_key

    def bad(self, reason: str, where: str, detail: str, fix: str) -> None:
        if self.on_error == "raise":
            raise DataError(f"{where}: {detail}; {fix} (or set {self.skip_key} to skip and count such input)")
        self.report.add(reason, where)


def file_format(path: Path, override: str | None = None) -> str | None:
    """The format of `path` from its suffix (".gz" looked through), or `override`; None if unknown."""
    if override is not None:
        return override
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return suffix if suffix in FORMATS else None


def read_file(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    """The documents of one file; a file without any is bad input too (unless its lines were)."""
    fmt = file_format(path, spec.format)
    readers = {
        "txt": _read_txt,
        "jsonl": _read_jsonl,
        "json": _read_json,
        "csv": _read_csv,
        "tsv": _read_csv,
        "parquet": _read_parquet,
    }
    count, skipped_before = 0, policy.report.total
    try:
        for doc in readers[fmt](path, spec, policy, progress):
            count += 1
            yield doc
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # corrupt or truncated .gz
        policy.bad(
            "corrupt gzip file",
            str(path),
            f"not a valid gzip file ({e})",
            "re-create or re-download the file",
        )
    if count == 0 and policy.report.total == skipped_before:  # else its lines were reported already
        policy.bad(
            "file without documents",
            str(path),
            "the file has no documents (it is empty or blank)",
            "remove it from the source or fill it",
        )


@contextmanager
def _open_binary(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], int]]]:
    """A binary stream (gunzipped for .gz) and a function giving the on-disk bytes read so far."""
    with open(path, "rb") as raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream, raw.tell
        else:
            yield raw, raw.tell


def read_lines(path: Path, policy: ErrorPolicy, progress: Callable[[int], None]) -> Iterator[tuple[int, str]]:
    """(line number, line with its ending) for every line that is valid UTF-8 (a first-line BOM dropped);
    a line that is not is reported to `policy` with its number."""
    with _open_binary(path) as (stream, tell):
        reported = 0
        for lineno, raw in enumerate(stream, 1):
            if lineno % _PROGRESS_EVERY == 0:
                position = tell()
                progress(position - reported)
                reported = position
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                policy.bad(
                    "invalid UTF-8",
                    f"{path}:{lineno}",
                    f"invalid UTF-8 at byte {e.start} of the line",
                    "convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8)",
                )
                continue
            yield lineno, (line[1:] if lineno == 1 and line.startswith("\ufeff") else line)
        progress(tell() - reported)


def _read_txt(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    paragraph: list[str] = []
    start = 0
    for lineno, line in read_lines(path, policy, progress):
        text = line.rstrip("\r\n")
        if not spec.blank_line_documents:
            if text.strip():
                yield Document(text, f"{path}:{lineno}")
        elif text.strip():
            start = start or lineno
            paragraph.append(text)
        elif paragraph:
            yield Document("\n".join(paragraph), f"{path}:{start}")
            paragraph, start = [], 0
    if paragraph:
        yield Document("\n".join(paragraph), f"{path}:{start}")


def jsonl_values(
    path: Path, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) of every non-blank line of a .jsonl file; malformed JSON is reported."""
    for lineno, line in read_lines(path, policy, progress):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            policy.bad(
                "malformed JSON",
                where,
                f"malformed JSON ({e.msg} at column {e.colno})",
                "fix the line; each line must be one JSON object",
            )
            continue
        yield where, value


def _read_jsonl(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    for where, record in jsonl_values(path, policy, progress):
        text = _text_of(record, spec.text_field, where, policy)
        if text is not None:
            yield Document(text, where)


def _text_of(record: Any, key: str, where: str, policy: ErrorPolicy) -> str | None:
    """record[key] when it is a string; otherwise report why not and return None."""
    if not isinstance(record, dict):
        policy.bad(
            "record that is not an object",
            where,
            f"expected a JSON object, got {type(record).__name__}",
            'each record must be an object such as {"text": "..."}',
        )
        return None
    if key not in record:
        policy.bad(
            f'missing field "{key}"',
            where,
            f'no field "{key}"{did_you_mean(key, record)}; fields: {", ".join(map(str, record)) or "(none)"}',
            "set text_field: to the field holding the text",
        )
        return None
    value = record[key]
    if not isinstance(value, str):
        policy.bad(
            f'non-text field "{key}"',
            where,
            f'field "{key}" is {type(value).__name__}, not a string',
            "set text_field: to a field holding text",
        )
        return None
    return value


NO_JSON = object()  # load_json: the file was reported as bad input


def load_json(path: Path, policy: ErrorPolicy, progress: Callable[[int], None], fix: str) -> Any:
    """The parsed JSON document of `path`, or NO_JSON after reporting invalid UTF-8 or malformed JSON
    (with its line; `fix` says how to fix a malformed file)."""
    with _open_binary(path) as (stream, tell):
        data = stream.read()
        progress(tell())
    try:
        return json.loads(data.decode("utf-8-sig"))  # -sig: a leading BOM is not JSON
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        policy.bad("invalid UTF-8", f"{path}:{line}", "invalid UTF-8", "convert the file to UTF-8")
    except json.JSONDecodeError as e:
        policy.bad(
            "malformed JSON", f"{path}:{e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})", fix
        )
    return NO_JSON


def json_records(content: Any, path: Path, policy: ErrorPolicy) -> tuple[list[Any], str] | None:
    """(records, the key holding them or "") of a JSON document that is a list of records or an object
    with exactly one list; None after reporting any other shape."""
    records, key = content, ""
    if isinstance(content, dict):
        lists = [k for k, v in content.items() if isinstance(v, list)]
        if len(lists) != 1:
            policy.bad(
                "JSON without one list of records",
                str(path),
                f"expected a list of records or an object with one list, found lists {lists}",
                "store the records as a list (or use .jsonl)",
            )
            return None
        records, key = content[lists[0]], lists[0]
    if not isinstance(records, list):
        policy.bad(
            "JSON without one list of records",
            str(path),
            f"expected a list, got {type(records).__name__}",
            "store the records as a list (or use .jsonl)",
        )
        return None
    return records, key


def _read_json(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    content = load_json(
        path,
        policy,
        progress,
        "fix the file; a .json source is one JSON document (use .jsonl for one object per line)",
    )
    found = None if content is NO_JSON else json_records(content, path, policy)
    if found is None:
        return
    records, prefix = found
    for i, record in enumerate(records):
        where = f"{path}: {prefix}[{i}]" if prefix else f"{path}: item {i}"
        text = _text_of(record, spec.text_field, where, policy)
        if text is not None:
            yield Document(text, where)


def csv_rows(
    path: Path, tsv: bool, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[tuple[int, list[str]]]:
    """(number of its first line, fields) of every record of a .csv / .tsv, the header first; blank lines
    give empty records. A malformed record is reported (and ends the file when it is the header)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # documents are longer than csv's 128 KiB default
    # .tsv: quotes are ordinary characters (GLUE-style files quote nothing); .csv: standard quoting.
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    last_line, first_line = [0], [0]  # the last line the csv reader took; the first of the current record

    def lines() -> Iterator[str]:
        for lineno, line in read_lines(path, policy, progress):
            first_line[0] = first_line[0] or lineno  # records may span lines
            last_line[0] = lineno
            yield line

    reader = csv.reader(lines(), **options)
    header = True
    while True:
        first_line[0] = 0
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start = first_line[0] or last_line[0] + 1
            policy.bad(
                "malformed CSV",
                f"{path}:{start}",
                f"malformed CSV ({e})",
                "fix the header row" if header else "fix the line",
            )
            if header:
                return
            continue
        header = False
        yield first_line[0] or last_line[0], row


def _read_csv(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    rows = csv_rows(path, file_format(path, spec.format) == "tsv", policy, progress)
    first = next(rows, None)
    if first is None:
        return
    header = first[1]
    if spec.text_field not in header:
        policy.bad(
            f'missing column "{spec.text_field}"',
            f"{path}:1",
            f'no column "{spec.text_field}"'
            f"{did_you_mean(spec.text_field, header)}; columns: {', '.join(header)}",
            "set text_field: to the column holding the text (the first row must name the columns)",
        )
        return
    column = header.index(spec.text_field)
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if not row:
            continue  # a blank line
        if column >= len(row):
            policy.bad(
                f'missing column "{spec.text_field}"',
                where,
                f"the row has {len(row)} fields, the header {len(header)}",
                "fix the row",
            )
            continue
        yield Document(row[column], where)


@contextmanager
def parquet_file(path: Path, policy: ErrorPolicy) -> Iterator[Any]:
    """A pyarrow ParquetFile of `path` (.parquet.gz gunzipped), or None after reporting an unreadable file;
    ConfigError naming the extra when pyarrow is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ConfigError(f"{path}: reading .parquet needs pyarrow: pip install 'plmkit[parquet]'") from e
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield pq.ParquetFile(f)
        return
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid etc. on a file that is not parquet
        policy.bad(
            "unreadable parquet file",
            str(path),
            f"not a readable parquet file ({e})",
            "re-create the file",
        )
        parquet = None
    yield parquet


def _read_parquet(
    path: Path, spec: SourceSpec, policy: ErrorPolicy, progress: Callable[[int], None]
) -> Iterator[Document]:
    with parquet_file(path, policy) as parquet:
        if parquet is None:
            return
        yield from _parquet_rows(parquet, path, spec, policy)
    progress(path.stat().st_size)


def _parquet_rows(parquet: Any, path: Path, spec: SourceSpec, policy: ErrorPolicy) -> Iterator[Document]:
    names = parquet.schema_arrow.names
    if spec.text_field not in names:
        policy.bad(
            f'missing column "{spec.text_field}"',
            str(path),
            f'no column "{spec.text_field}"'
            f"{did_you_mean(spec.text_field, names)}; columns: {', '.join(names)}",
            "set text_field: to the column holding the text",
        )
        return
    row = 0
    for batch in parquet.iter_batches(columns=[spec.text_field]):
        for value in batch.column(0).to_pylist():
            where = f"{path}: row {row}"
            row += 1
            if not isinstance(value, str):
                reason = (
                    f'missing field "{spec.text_field}"'
                    if value is None
                    else f'non-text field "{spec.text_field}"'
                )
                policy.bad(
                    reason,
                    where,
                    f"column {spec.text_field} holds {value!r}, not a string",
                    "fill or drop the row, or choose another text_field",
                )
                continue
            yield Document(value, where)
