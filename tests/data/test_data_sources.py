"""Text sources: every format (plain and .gz), folders, globs, and bad input with file:line or skip counts."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path

import pytest

from plmkit.data import Document, SkipReport, SourceSpec, iter_documents, resolve_files
from plmkit.errors import ConfigError, DataError

TEXTS = ["The quick brown fox.", '今天天气真好，"我们"出去玩吧', "tabs\tand, commas"]


def texts(spec, **kw) -> list[str]:
    return [d.text for d in iter_documents(spec, **kw)]


def write(path: Path, data: bytes | str) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def write_parquet(path: Path, column: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(column), path)
    return path


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    import io

    out = io.StringIO()
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    csv.writer(
        out,
        delimiter=delimiter,
        quoting=quoting,
        escapechar="\\" if delimiter == "\t" else None,
        lineterminator="\n",
    ).writerows(rows)
    return out.getvalue()


# ---- every format, plain and gzipped ---------------------------------------------------------------


@pytest.mark.parametrize("gz", ["", ".gz"])
@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "json_object", "csv", "tsv"])
def test_each_format_reads_the_documents(tmp_path, fmt, gz):
    if fmt == "txt":
        path = write(tmp_path / f"a.txt{gz}", "\n".join(TEXTS) + "\n")
    elif fmt == "jsonl":
        lines = [json.dumps({"id": i, "body": t}, ensure_ascii=False) for i, t in enumerate(TEXTS)]
        path = write(tmp_path / f"a.jsonl{gz}", "\n".join(lines) + "\n\n")  # trailing blank lines are fine
    elif fmt == "json":
        path = write(tmp_path / f"a.json{gz}", json.dumps([{"body": t} for t in TEXTS], ensure_ascii=False))
    elif fmt == "json_object":
        path = write(
            tmp_path / f"a.json{gz}", json.dumps({"version": 1, "data": [{"body": t} for t in TEXTS]})
        )
    elif fmt == "csv":
        path = write(tmp_path / f"a.csv{gz}", csv_text([["label", "body"]] + [["1", t] for t in TEXTS]))
    else:
        path = write(
            tmp_path / f"a.tsv{gz}",
            "label\tbody\n" + "".join(f"1\t{t.replace(chr(9), ' ')}\n" for t in TEXTS),
        )
    field = "text" if fmt == "txt" else "body"
    expected = TEXTS if fmt != "tsv" else [t.replace("\t", " ") for t in TEXTS]
    assert texts(SourceSpec(str(path), text_field=field)) == expected


@pytest.mark.parametrize("gz", ["", ".gz"])
def test_parquet(tmp_path, gz):
    plain = write_parquet(tmp_path / "a.parquet", {"text": TEXTS, "n": [1, 2, 3]})
    path = plain if not gz else write(tmp_path / "b.parquet.gz", plain.read_bytes())
    docs = list(iter_documents(SourceSpec(str(path))))
    assert [d.text for d in docs] == TEXTS
    assert docs[1].where == f"{path}: row 1"


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "a.parquet", {"text": TEXTS})
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now fails
    with pytest.raises(ConfigError, match=r"plmkit\[parquet\]"):
        texts(SourceSpec(str(path)))


def test_txt_keeps_whitespace_drops_line_endings_blank_lines_and_bom(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeff first \r\n\r\n   \n\tsecond\t\nthird")
    docs = list(iter_documents(SourceSpec(str(path))))
    assert docs == [
        Document(" first ", f"{path}:1"),
        Document("\tsecond\t", f"{path}:4"),
        Document("third", f"{path}:5"),
    ]


def test_txt_blank_line_documents(tmp_path):
    path = write(tmp_path / "a.txt", "\n\npara one\nline two\n\n\n = Title = \npara two\n")
    docs = list(iter_documents(SourceSpec(str(path), blank_line_documents=True)))
    assert docs == [
        Document("para one\nline two", f"{path}:3"),
        Document(" = Title = \npara two", f"{path}:7"),
    ]


def test_csv_quoted_fields_may_span_lines_and_tsv_keeps_quotes(tmp_path):
    path = write(tmp_path / "a.csv", 'id,text\n1,"two\nlines, quoted ""x"""\n2,plain\n')
    docs = list(iter_documents(SourceSpec(str(path))))
    assert docs == [Document('two\nlines, quoted "x"', f"{path}:2"), Document("plain", f"{path}:4")]
    tsv = write(tmp_path / "a.tsv", 'sentence\tlabel\n"it \'s" good\t1\n')
    assert texts(SourceSpec(str(tsv), text_field="sentence")) == ['"it \'s" good']


def test_json_locations_name_the_record(tmp_path):
    path = write(tmp_path / "a.json", "\ufeff" + json.dumps({"data": [{"text": "a"}, {"text": "b"}]}))
    assert [d.where for d in iter_documents(SourceSpec(str(path)))] == [
        f"{path}: data[0]",
        f"{path}: data[1]",
    ]


def test_format_override_for_odd_names(tmp_path):
    path = write(tmp_path / "train_0", '{"sentence": "x"}\n')
    with pytest.raises(DataError, match="unknown file type"):
        texts(SourceSpec(str(path)))
    assert texts(SourceSpec(str(path), format="jsonl", text_field="sentence")) == ["x"]


def test_folder_is_recursive_sorted_and_reads_known_suffixes_only(tmp_path):
    write(tmp_path / "b.txt", "b1\nb2\n")
    write(tmp_path / "a" / "z.jsonl.gz", '{"text": "z"}\n')
    write(tmp_path / "a" / "y.txt", "y\n")
    write(tmp_path / "README.md", "not data\n")
    write(tmp_path / ".hidden" / "h.txt", "hidden\n")
    assert texts(SourceSpec(str(tmp_path))) == ["y", "z", "b1", "b2"]
    assert [p.name for p in resolve_files(SourceSpec(str(tmp_path)))] == ["y.txt", "z.jsonl.gz", "b.txt"]


def test_glob(tmp_path):
    for name in ["c.txt", "a.txt", "b.csv"]:
        write(tmp_path / name, f"text\n{name}\n")
    assert texts(SourceSpec(str(tmp_path / "*.txt"))) == ["text", "a.txt", "text", "c.txt"]
    assert texts(SourceSpec(str(tmp_path / "**" / "b.*"))) == ["b.csv"]


def test_progress_reports_the_bytes_read(tmp_path):
    path = write(tmp_path / "a.txt", "line\n" * 1000)
    seen = []
    list(iter_documents(SourceSpec(str(path)), progress=seen.append))
    assert sum(seen) == path.stat().st_size


# ---- bad input: file:line by default ---------------------------------------------------------------

BAD_INPUTS = {
    # name: (file name, content, message pattern with {path})
    "jsonl malformed": ("a.jsonl", '{"text": "ok"}\n\n{"text": oops}\n', r"{path}:3: malformed JSON"),
    "jsonl missing field": (
        "a.jsonl",
        '{"text": "ok"}\n{"txt": "x"}\n',
        r'{path}:2: no field "text" \(did you mean "txt"\?\)',
    ),
    "jsonl not text": ("a.jsonl", '{"text": 5}\n', r'{path}:1: field "text" is int'),
    "jsonl not object": ("a.jsonl", '["text"]\n', r"{path}:1: expected a JSON object"),
    "jsonl invalid utf8": ("a.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', r"{path}:2: invalid UTF-8"),
    "jsonl.gz malformed": ("a.jsonl.gz", '{"text": "ok"}\n{\n', r"{path}:2: malformed JSON"),
    "jsonl empty": ("a.jsonl", "", r"{path}: the file has no documents"),
    "txt invalid utf8": ("a.txt", b"ok\n\xe4\xbb\n", r"{path}:2: invalid UTF-8"),
    "txt blank": ("a.txt", "\n  \n", r"{path}: the file has no documents"),
    "txt.gz empty": ("a.txt.gz", "", r"{path}: the file has no documents"),
    "json malformed": ("a.json", '[{"text": "a"},\n {"text": }]', r"{path}:2: malformed JSON"),
    "json missing field": ("a.json", '[{"text": "a"}, {"title": "b"}]', r'{path}: item 1: no field "text"'),
    "json no list": ("a.json", '{"a": 1}', r"{path}: expected a list of records"),
    "json invalid utf8": ("a.json", b'[{"text": "a"},\n{"text": "\xff"}]', r"{path}:2: invalid UTF-8"),
    "json empty list": ("a.json", "[]", r"{path}: the file has no documents"),
    "csv missing column": ("a.csv", "id,body\n1,x\n", r'{path}:1: no column "text"; columns: id, body'),
    "csv short row": ("a.csv", "id,text\n1,x\n2\n", r"{path}:3: the row has 1 fields"),
    "csv invalid utf8": ("a.csv", b"text\nok\n\xff\n", r"{path}:3: invalid UTF-8"),
    "csv empty": ("a.csv", "", r"{path}: the file has no documents"),
    "tsv header only": ("a.tsv", "text\tlabel\n", r"{path}: the file has no documents"),
    "corrupt gzip": ("a.txt.gz", None, r"{path}: not a valid gzip file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_with_file_and_line(tmp_path, case):
    name, content, pattern = BAD_INPUTS[case]
    if content is None:  # a gzip file cut short
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"line one\nline two\n" * 100)[:50])
    else:
        path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=pattern.format(path=_re(path))) as info:
        texts(SourceSpec(str(path)))
    assert "on_error: skip" in str(info.value)  # the message says how to get past it


def _re(path: Path) -> str:
    import re

    return re.escape(str(path))


def test_bad_parquet(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"txt": ["x"]})
    with pytest.raises(DataError, match=r'no column "text" \(did you mean "txt"\?\)'):
        texts(SourceSpec(str(path)))
    path = write_parquet(tmp_path / "b.parquet", {"text": ["x", None, "y"]})
    with pytest.raises(DataError, match=rf"{_re(path)}: row 1: column text holds None"):
        texts(SourceSpec(str(path)))
    assert texts(SourceSpec(str(path), on_error="skip"), skipped=SkipReport()) == ["x", "y"]
    garbage = write(tmp_path / "c.parquet", "not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        texts(SourceSpec(str(garbage)))


@pytest.mark.parametrize(
    "path, pattern",
    [
        ("missing.txt", "no such file or folder"),
        ("nothing*.txt", "the glob matches no files"),
        ("empty_dir", "the folder has no data files"),
    ],
)
def test_bad_paths_always_raise(tmp_path, path, pattern):
    (tmp_path / "empty_dir").mkdir()
    write(tmp_path / "empty_dir" / "notes.md", "x")
    with pytest.raises(DataError, match=pattern):
        texts(SourceSpec(str(tmp_path / path), on_error="skip"))


# ---- bad input: skip and count ---------------------------------------------------------------------


def test_skip_counts_every_skipped_record_with_locations(tmp_path):
    lines = ['{"text": "a"}', "{bad", '{"text": "b"}', "{bad", '{"title": "c"}', "{bad", "{bad"]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    write(tmp_path / "b.txt", b"fine\n\xff\xfe\n")
    write(tmp_path / "c.txt", "")
    report = SkipReport()
    docs = list(iter_documents(SourceSpec(str(tmp_path), on_error="skip"), skipped=report))
    assert [d.text for d in docs] == ["a", "b", "fine"]
    assert report.counts == {
        "malformed JSON": 4,
        'missing field "text"': 1,
        "invalid UTF-8": 1,
        "file without documents": 1,
    }
    assert report.total == 7
    assert report.first["malformed JSON"] == [f"{path}:2", f"{path}:4", f"{path}:6"]  # first 3 kept
    summary = report.lines()
    assert summary[0] == f"skipped 4 × malformed JSON (first at {path}:2, {path}:4, {path}:6, ...)"
    assert SkipReport.from_dict(json.loads(json.dumps(report.to_dict()))).counts == report.counts


def test_a_file_whose_lines_were_all_skipped_is_not_counted_twice(tmp_path):
    path = write(tmp_path / "a.jsonl", "{bad\n")
    report = SkipReport()
    assert texts(SourceSpec(str(path), on_error="skip"), skipped=report) == []
    assert report.counts == {"malformed JSON": 1}


def test_skip_without_a_report_warns_with_the_summary(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a"}\n{bad\n')
    with pytest.warns(UserWarning, match=r"skipped 1 × malformed JSON \(first at .*a.jsonl:2\)"):
        assert texts(SourceSpec(str(path), on_error="skip")) == ["a"]


def test_empty_text_fields_are_documents_not_errors(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": ""}\n{"text": "x"}\n')
    assert texts(SourceSpec(str(path))) == ["", "x"]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"weight": 0}, "weight must be a positive"),
        ({"weight": float("nan")}, "weight must be a positive"),
        ({"on_error": "ignore"}, "on_error must be"),
        ({"format": "jsonlines"}, 'unknown format .*did you mean "jsonl"'),
    ],
)
def test_source_spec_validation(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        SourceSpec("x.txt", **kwargs)


def test_source_spec_from_yaml_style_dict():
    from plmkit.config import from_dict

    spec = from_dict(SourceSpec, {"path": "wiki/", "weight": 3, "on_error": "skip"})
    assert spec == SourceSpec("wiki/", weight=3, on_error="skip")
    with pytest.raises(ConfigError, match="weigth"):
        from_dict(SourceSpec, {"path": "wiki/", "weigth": 3})


def test_an_unknown_file_type_names_the_file_and_the_format_key(tmp_path):
    raw = write(tmp_path / "wiki.test.raw", " = Title = \r\n A paragraph .\r\n")
    with pytest.raises(DataError) as error:
        texts(SourceSpec(str(raw)))
    assert str(error.value).startswith(f'{raw}: unknown file type ".raw"; set format: in its source, e.g. ')
    assert f"{{path: {raw}, format: txt}} for plain text (one document per line)" in str(error.value)
    assert texts(SourceSpec(str(raw), format="txt")) == [" = Title = ", " A paragraph ."]
    bare = write(tmp_path / "train_0", "x\n")
    with pytest.raises(DataError, match=r"train_0: unknown file type \(no suffix\); set format:"):
        texts(SourceSpec(str(bare)))


def test_a_folder_of_unknown_types_names_them(tmp_path):
    for name in ("wiki.train.raw", "wiki.valid.raw"):
        write(tmp_path / "wiki" / name, "text\n")
    with pytest.raises(DataError) as error:
        resolve_files(SourceSpec(str(tmp_path / "wiki")))
    assert "the folder has no data files" in str(error.value)
    assert "it has 2 file(s) of other types (wiki.train.raw, wiki.valid.raw)" in str(error.value)
    assert "give a file or glob as the path and set format:" in str(error.value)
    glob = SourceSpec(str(tmp_path / "wiki" / "*.raw"), format="txt")  # the fix it names
    assert [p.name for p in resolve_files(glob)] == ["wiki.train.raw", "wiki.valid.raw"]
