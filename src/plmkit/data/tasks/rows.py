"""Task data: the rows of a fine-tuning recipe's train / dev / test files, under the recipe's column mapping.

    config = TaskDataConfig(train="sst2/train.tsv", dev="sst2/dev.tsv", columns={"text": "sentence"})
    split = read_split(config, "dev", required=("text", "label"), texts=("text",))
    split.rows[0]   # Row(values={"text": "it 's a charming ...", "label": "1"}, where="sst2/dev.tsv:2")

Formats (`format: auto` picks one from the suffix, ".gz" looked through): `.jsonl`, `.json` (a list of
records or an object with one list; SQuAD-style {"data": [{"paragraphs": [{"qas": ...}]}]} is read as
`squad`), `.csv` / `.tsv` (a header row naming the columns; values stay strings), `.parquet`, and
`datasets` (a `save_to_disk` folder, or a file read by `datasets.load_dataset`). JSON values keep their
types. The lines are read by data/formats.py's readers, so bad input is reported the same way: a
DataError "file:line: what; how to fix", or with `on_error: skip` a count per reason in a SkipReport.

A column the mapping names but the header (or the first row) lacks is a mistake in the recipe, not in the
data: it raises at once even with `on_error: skip`. Order of the steps: read -> bad rows skipped ->
`drop_labels` rows dropped (counted) -> the `*_rows` slice.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.data.formats import (
    NO_JSON,
    ErrorPolicy,
    csv_rows,
    file_format,
    json_records,
    jsonl_values,
    load_json,
    parquet_file,
)
from plmkit.data.sources import SkipReport
from plmkit.data.tasks.labels import label_name
from plmkit.errors import ConfigError, DataError, did_you_mean

TASK_FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "datasets")
SPLITS = ("train", "dev", "test", "unlabelled")  # unlabelled: texts without labels (PET)
# The DatasetDict split each of our splits reads, in order of preference.
DATASETS_SPLITS = {
    "train": ("train",),
    "dev": ("validation", "dev"),
    "test": ("test",),
    "unlabelled": ("unlabeled", "unlabelled", "unsupervised"),
}
_SKIP_KEY = "data.on_error=skip"
Record = dict[str, Any]  # one row as the file has it: its own column names -> values


@dataclass
class TaskDataConfig:
    """The `data` section of a fine-tuning recipe."""

    train: str | None = None  # a file (.jsonl .json .csv .tsv .parquet, each also .gz) or a datasets folder
    dev: str | None = None
    test: str | None = None
    unlabelled: str | None = None  # texts without labels: PET's auxiliary MLM and its distillation set
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "datasets"] = "auto"
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> the file's column / key
    on_error: Literal["raise", "skip"] = "raise"
    train_rows: str | None = None  # "START:END", a python slice of the split's rows after reading
    dev_rows: str | None = None
    test_rows: str | None = None
    unlabelled_rows: str | None = None
    drop_labels: list[str] = field(default_factory=list)  # rows with these labels are dropped (SNLI's "-")

    def __post_init__(self) -> None:
        if self.format not in TASK_FORMATS:
            raise ConfigError(
                f"data.format: unknown format {self.format!r}{did_you_mean(str(self.format), TASK_FORMATS)}; "
                f"known: {', '.join(TASK_FORMATS)}"
            )
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f'data.on_error must be "raise" or "skip", got {self.on_error!r}')
        for split in SPLITS:
            rows_slice(getattr(self, f"{split}_rows"), f"data.{split}_rows")


@dataclass
class Row:
    values: dict[str, Any]  # canonical column -> value
    where: (
        str  # "file:line" (json: "file: item N"; parquet/datasets: "file: row N"; squad: "file: question ID")
    )


@dataclass
class TaskSplit:
    name: str  # train / dev / test
    path: str
    rows: list[Row]
    skipped: SkipReport  # on_error: skip — a count per reason, the first locations
    dropped: int = 0  # rows whose label is in data.drop_labels


def rows_slice(text: str | None, key: str) -> slice:
    """The slice "START:END" (python slice, either side optional, negatives count from the end)."""
    if text is None:
        return slice(None)
    if isinstance(text, int):  # YAML 1.1 reads an unquoted 1:30 as the base-60 number 90
        raise ConfigError(
            f'{key}: expected "START:END" as a string, got the number {text}; quote it ("1:30")'
        )
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ConfigError(
            f"{key}: expected START:END (a python slice, either side optional, e.g. 0:10000 or :500), "
            f"got {text!r}"
        ) from None
    return slice(start, end)


def read_split(
    config: TaskDataConfig,
    split: Literal["train", "dev", "test", "unlabelled"],
    required: Sequence[str],
    optional: Sequence[str] = (),
    texts: Sequence[str] = (),
    check_answer_offsets: bool = True,
) -> TaskSplit:
    """The rows of data.<split> with the canonical columns `required` (each row must have them) and
    `optional` (read when present); `texts` must be non-empty strings. With `check_answer_offsets`, a row
    with `context` and `answers` whose answer text is not at its answer_start is a bad row."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    name = getattr(config, split)
    if not name:
        raise ConfigError(f"data.{split} is not set; set it to the {split} file")
    selected = rows_slice(getattr(config, f"{split}_rows"), f"data.{split}_rows")
    columns = _column_map(config.columns, required, optional)
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(
            f"data.{split}: {name} does not exist; check the path (relative paths are relative to the "
            f"working directory {Path.cwd()})"
        )
    report = SkipReport()
    policy = ErrorPolicy(config.on_error, report, skip_key=_SKIP_KEY)
    fmt = _format_of(path, config.format, split)
    rows, dropped, first = [], 0, True
    for where, record in _records(path, fmt, split, policy):
        values = _values(record, where, columns, required, policy, first, fmt)
        first = False
        if values is None:
            continue
        if config.drop_labels and _dropped(values.get("label"), config.drop_labels):
            dropped += 1
            continue
        if _texts_ok(values, where, texts, policy) and _answers_ok(
            values, where, policy, check_answer_offsets
        ):
            rows.append(Row(values, where))
    kept = rows[selected]
    if not kept:
        raise DataError(_no_rows_message(config, split, name, len(rows), report, dropped))
    return TaskSplit(split, name, kept, report, dropped)


def _column_map(mapping: dict[str, str], required: Sequence[str], optional: Sequence[str]) -> dict[str, str]:
    """canonical name -> the file's column, for every column the task reads."""
    names = list(dict.fromkeys([*required, *optional]))
    for name in mapping:
        if name not in names:
            raise ConfigError(
                f"data.columns.{name}: this task reads no column {name!r}{did_you_mean(name, names)}; "
                f"it reads {', '.join(names)}"
            )
    return {name: str(mapping.get(name, name)) for name in names}


def _format_of(path: Path, fmt: str, split: str) -> str:
    if path.is_dir():
        if fmt == "datasets" or (
            fmt == "auto" and any((path / f).exists() for f in ("dataset_dict.json", "state.json"))
        ):
            return "datasets"
        raise DataError(
            f"data.{split}: {path} is a folder; give a data file, or a datasets save_to_disk folder "
            "with data.format=datasets"
        )
    if fmt != "auto":
        return fmt
    found = file_format(path)
    if found is None or found == "txt":
        raise ConfigError(
            f"data.{split}: {path}: cannot tell the format from the name; set data.format to one of "
            f"{', '.join(TASK_FORMATS[1:])} (auto reads .jsonl .json .csv .tsv .parquet, optionally + .gz)"
        )
    return found


def _records(path: Path, fmt: str, split: str, policy: ErrorPolicy) -> Iterator[tuple[str, Record]]:
    """(where, record) of every record of the file; bad records are reported to `policy`."""
    if fmt == "datasets":
        yield from _datasets_records(path, split)
        return
    readers = {"jsonl": _jsonl_records, "csv": _csv_records, "tsv": _csv_records, "parquet": _parquet_records}
    try:
        if fmt in ("json", "squad"):
            yield from _json_records(path, fmt, policy)
        else:
            yield from readers[fmt](path, policy, fmt)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a corrupt or truncated .gz: not a row's fault
        raise DataError(f"{path}: not a valid gzip file ({e}); re-create or re-download it") from e


def _object(record: Any, where: str, policy: ErrorPolicy) -> bool:
    if isinstance(record, dict):
        return True
    policy.bad(
        "record that is not an object",
        where,
        f"expected a JSON object, got {type(record).__name__}",
        'each row must be an object such as {"text": "...", "label": "..."}',
    )
    return False


def _jsonl_records(path: Path, policy: ErrorPolicy, fmt: str) -> Iterator[tuple[str, Record]]:
    for where, record in jsonl_values(path, policy, lambda n: None):
        if _object(record, where, policy):
            yield where, record


def _json_records(path: Path, fmt: str, policy: ErrorPolicy) -> Iterator[tuple[str, Record]]:
    fix = "fix the file; a .json file is one JSON document (use .jsonl for one object per line)"
    content = load_json(path, policy, lambda n: None, fix)
    if content is NO_JSON:
        return
    if fmt == "squad" or _is_squad(content):
        yield from _squad_records(content, path)
        return
    found = json_records(content, path, policy)
    for i, record in enumerate(found[0] if found else []):
        where = f"{path}: item {i}"
        if _object(record, where, policy):
            yield where, record


def _is_squad(content: Any) -> bool:
    """SQuAD's layout: {"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}, ...]}."""
    articles = content.get("data") if isinstance(content, dict) else None
    if not (isinstance(articles, list) and articles and isinstance(articles[0], dict)):
        return False
    paragraphs = articles[0].get("paragraphs")
    return isinstance(paragraphs, list) and bool(paragraphs) and "qas" in paragraphs[0]


def _squad_records(content: Any, path: Path) -> Iterator[tuple[str, Record]]:
    """One record per question: id, title, context, question, answers {"text": [...], "answer_start": [...]}."""

    def broken(where: str, what: str) -> DataError:  # the layout itself: no row to skip
        return DataError(
            f"{path}: {where}: {what}; a squad file is {{'data': [{{'title', 'paragraphs': "
            "[{'context', 'qas': [{'id', 'question', 'answers': [{'text', 'answer_start'}]}]}]}]}"
        )

    articles = content.get("data") if isinstance(content, dict) else None
    if not isinstance(articles, list):
        raise broken("the top level", "no list 'data'")
    for a, article in enumerate(articles):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise broken(f"data[{a}]", "no list 'paragraphs'")
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise broken(f"data[{a}].paragraphs[{p}]", "no list 'qas'")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise broken(f"data[{a}].paragraphs[{p}].qas[{q}]", "not an object")
                qid = qa.get("id", f"data[{a}].paragraphs[{p}].qas[{q}]")
                record = {"id": qid, "title": article.get("title"), "context": paragraph.get("context")}
                record.update({k: v for k, v in qa.items() if k != "id"})
                yield f"{path}: question {qid}", record


def _csv_records(path: Path, policy: ErrorPolicy, fmt: str) -> Iterator[tuple[str, Record]]:
    rows = csv_rows(path, fmt == "tsv", policy, lambda n: None)
    first = next(rows, None)
    if first is None:
        return
    header_line, header = first
    if not header:
        raise DataError(
            f"{path}:{header_line}: the header row is blank; a .{fmt} file starts with a header row "
            "naming its columns"
        )
    for lineno, fields in rows:
        where = f"{path}:{lineno}"
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line
        if len(fields) != len(header):
            policy.bad(
                "row with the wrong number of fields",
                where,
                f"the row has {len(fields)} fields but the header (line {header_line}) has {len(header)}",
                f"fix the row; a .{fmt} file needs a header row naming its columns and every row the same "
                "number of fields",
            )
            continue
        yield where, dict(zip(header, fields))


def _parquet_records(path: Path, policy: ErrorPolicy, fmt: str) -> Iterator[tuple[str, Record]]:
    with parquet_file(path, policy) as parquet:
        if parquet is None:
            return
        n = 0
        for batch in parquet.iter_batches():
            for record in batch.to_pylist():
                yield f"{path}: row {n}", record
                n += 1


def _datasets_records(path: Path, split: str) -> Iterator[tuple[str, Record]]:
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("format datasets needs the datasets package: pip install 'plmkit[datasets]'") from e
    where = str(path)
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:  # datasets raises FileNotFoundError, ValueError, ... on a foreign folder
            raise DataError(f"data.{split}: {path} is not a datasets save_to_disk folder ({e})") from e
        if isinstance(loaded, datasets.DatasetDict):
            found = next((s for s in DATASETS_SPLITS[split] if s in loaded), None)
            if found is None:
                raise DataError(
                    f"data.{split}: {path} has no split {' or '.join(map(repr, DATASETS_SPLITS[split]))} "
                    f"(its splits: {', '.join(loaded)}); save the split under that name or point data.{split} "
                    "at a folder of one Dataset"
                )
            loaded, where = loaded[found], f"{path}/{found}"
    else:
        loaded = _load_dataset_file(datasets, path, split)
    for i, record in enumerate(loaded):
        yield f"{where}: row {i}", record


def _load_dataset_file(datasets: Any, path: Path, split: str) -> Any:
    suffix = file_format(path)
    builders = {"jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}
    if suffix not in builders:
        raise ConfigError(
            f"data.{split}: {path}: format datasets reads a save_to_disk folder or a .jsonl, .json, .csv, "
            ".tsv or .parquet file"
        )
    options = {"sep": "\t"} if suffix == "tsv" else {}
    try:
        return datasets.load_dataset(builders[suffix], data_files=str(path), split="train", **options)
    except Exception as e:  # the builders raise their own errors (DatasetGenerationError, ArrowInvalid, ...)
        raise DataError(f"data.{split}: datasets.load_dataset cannot read {path} ({e}); fix the file") from e


def _values(
    record: Record,
    where: str,
    columns: dict[str, str],
    required: Sequence[str],
    policy: ErrorPolicy,
    first: bool,
    fmt: str,
) -> dict[str, Any] | None:
    """The row's canonical values, or None after reporting a missing or empty required column."""
    values = {}
    for name, key in columns.items():
        if key in record and record[key] is not None:
            values[name] = record[key]
        elif name not in required:
            continue
        elif key not in record:
            detail = (
                f"no column {key!r}"
                + ("" if key == name else f" for {name}")
                + f" (the row has: {', '.join(map(str, record))}){did_you_mean(key, map(str, record))}"
            )
            fix = f"set data.columns.{name}=NAME to the column that holds it"
            if first:  # the mapping is wrong, not the row
                header = f" (the first line of a .{fmt} file is its header)" if fmt in ("csv", "tsv") else ""
                raise DataError(f"{where}: {detail}; {fix}{header}")
            policy.bad(f"no column {key!r}", where, detail, fix)
            return None
        else:
            policy.bad(f"empty {name}", where, f"{name} is empty (null)", "fill it or remove the row")
            return None
    for name in required:
        value = values[name]
        if isinstance(value, str) and not value.strip():
            policy.bad(f"empty {name}", where, f"{name} is empty", "fill it or remove the row")
            return None
    return values


def _dropped(label: Any, drop: list[str]) -> bool:
    """Whether a label is one of data.drop_labels (compared as text: 1 and "1" alike; lists never)."""
    return isinstance(label, (str, int, float)) and label_name(label) in drop


def _texts_ok(values: dict[str, Any], where: str, texts: Sequence[str], policy: ErrorPolicy) -> bool:
    for name in texts:
        value = values.get(name)
        if name not in values:
            continue  # an optional text the row does not have
        if not isinstance(value, str):
            policy.bad(
                f"non-text {name}",
                where,
                f"{name} is {type(value).__name__} ({str(value)[:40]}), not a string",
                f"fix the row, or set data.columns.{name} to a column holding text",
            )
            return False
        if not value.strip():
            policy.bad(f"empty {name}", where, f"{name} is empty", "fill it or remove the row")
            return False
    return True


def answers_of(value: Any) -> dict[str, list[Any]] | None:
    """{"text": [...], "answer_start": [...]} from that form or SQuAD's list of {"text", "answer_start"}."""
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        value = {
            "text": [a.get("text") for a in value],
            "answer_start": [a.get("answer_start") for a in value],
        }
    if not (isinstance(value, dict) and isinstance(value.get("text"), list)):
        return None
    starts = value.get("answer_start")
    if not isinstance(starts, list) or len(starts) != len(value["text"]):
        return None
    return {"text": list(value["text"]), "answer_start": list(starts)}


def _answers_ok(values: dict[str, Any], where: str, policy: ErrorPolicy, check_offsets: bool) -> bool:
    """`answers` is well formed (normalized in place to lists) and, with `check_offsets`, the first
    answer's text stands in the context at its answer_start: training learns that span, while the other
    answers are reference texts for EM / F1 only (CMRC 2018's dev set has 200 extra answers at -1 or off by
    one or two characters; 3 of its 3,219 first answers are wrong)."""
    if "answers" not in values:
        return True
    answers = answers_of(values["answers"])
    if answers is None:
        policy.bad(
            "malformed answers",
            where,
            "answers is not {text: [...], answer_start: [...]} (lists of equal length)",
            "fix the row",
        )
        return False
    values["answers"] = answers
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            policy.bad(
                "malformed answers",
                where,
                f"answer {text!r} at answer_start {start!r}: expected a string at an int offset",
                "fix the row",
            )
            return False
    context = values.get("context")
    if not check_offsets or not isinstance(context, str):
        return True
    for text, start in zip(answers["text"][:1], answers["answer_start"][:1]):
        there = context[start : start + len(text)] if start >= 0 else ""
        if there != text:
            policy.bad(
                "answer not at its answer_start",
                where,
                f"answer {text!r} at answer_start {start} does not match the context there ({there!r})",
                "fix answer_start",
            )
            return False
    return True


def _no_rows_message(
    config: TaskDataConfig, split: str, name: str, read: int, report: SkipReport, dropped: int
) -> str:
    rows_key = f"data.{split}_rows"
    if read:
        return (
            f"data.{split} {name} has no rows ({rows_key}={getattr(config, f'{split}_rows')} selects none of "
            f"its {read} rows); change {rows_key}"
        )
    parts = [f"{report.total} skipped: {report}" if report else "0 skipped"]
    if dropped:
        parts.append(f"{dropped} dropped by data.drop_labels")
    if report:
        fix = "fix those rows, or the data.columns mapping"
    elif dropped:
        fix = f"every row's label is in data.drop_labels ({', '.join(config.drop_labels)}); check it"
    else:
        fix = f"the file is empty; fill it or point data.{split} at another file"
    return f"data.{split} {name} has no rows ({'; '.join(parts)}); {fix}"
