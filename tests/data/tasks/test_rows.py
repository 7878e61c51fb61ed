"""Task data rows: every format (plain and .gz), the column mapping, bad rows with file:line or skip counts,
slices, drop_labels, SQuAD flattening with answer offsets, datasets folders and files, the shared data."""

from __future__ import annotations

import copy
import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from plmkit.data.tasks import TaskDataConfig, read_split
from plmkit.errors import ConfigError, DataError
from tiny import SHARED_DATA

ROWS = [("a fine film", "pos"), ("dull, and long", "neg"), ('he said "no"', "pos")]


def write(path: Path, data: str | bytes) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return str(path)


def task_file(folder: Path, fmt: str, gz: str = "") -> str:
    """ROWS with the columns sentence and gold, in format `fmt`."""
    records = [{"sentence": s, "gold": g, "n": i} for i, (s, g) in enumerate(ROWS)]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
        if gz:
            write(folder / "rows.parquet.gz", path.read_bytes())
            return str(folder / "rows.parquet.gz")
        return str(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif fmt == "json":
        text = json.dumps(records, indent=1)
    elif fmt == "csv":
        text = 'sentence,gold,n\na fine film,pos,0\n"dull, and long",neg,1\n"he said ""no""",pos,2\n'
    else:  # tsv: quotes are plain characters
        text = "sentence\tgold\tn\n" + "".join(f"{s}\t{g}\t{i}\n" for i, (s, g) in enumerate(ROWS))
    return write(folder / f"rows.{fmt}{gz}", text)


def read(path, split="train", required=("text", "label"), optional=(), texts=("text",), **config):
    config.setdefault("columns", {"text": "sentence", "label": "gold"})
    return read_split(TaskDataConfig(**{split: path}, **config), split, required, optional, texts)


# ---- every format, plain and gzipped ---------------------------------------------------------------


@pytest.mark.parametrize("gz", ["", ".gz"])
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_each_format_reads_the_rows_under_the_column_mapping(tmp_path, fmt, gz):
    path = task_file(tmp_path, fmt, gz)
    split = read(path, optional=("id",), columns={"text": "sentence", "label": "gold", "id": "n"})
    assert [(r.values["text"], r.values["label"]) for r in split.rows] == ROWS
    assert split.name == "train" and split.path == path and not split.skipped and split.dropped == 0
    where = {
        "jsonl": [f"{path}:1", f"{path}:2", f"{path}:3"],
        "json": [f"{path}: item {i}" for i in range(3)],
        "csv": [f"{path}:2", f"{path}:3", f"{path}:4"],
        "tsv": [f"{path}:2", f"{path}:3", f"{path}:4"],
        "parquet": [f"{path}: row {i}" for i in range(3)],
    }[fmt]
    assert [r.where for r in split.rows] == where
    # JSON and parquet keep their types; csv / tsv values stay strings
    assert [r.values["id"] for r in split.rows] == (["0", "1", "2"] if fmt in ("csv", "tsv") else [0, 1, 2])


def test_json_object_with_one_list_and_format_override(tmp_path):
    path = write(tmp_path / "a.data", json.dumps({"version": 1, "rows": [{"text": "x", "label": 1}]}))
    with pytest.raises(
        ConfigError, match=r"data\.train: .*a\.data: cannot tell the format.*set data\.format"
    ):
        read(path, columns={})
    split = read(path, columns={}, format="json")
    assert split.rows[0].values == {"text": "x", "label": 1} and split.rows[0].where == f"{path}: item 0"


def test_csv_records_spanning_lines_are_located_at_their_first_line(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label\n"two\nlines",a\n\nnext,b\n')
    split = read(path, columns={})
    assert [(r.values["text"], r.where) for r in split.rows] == [
        ("two\nlines", f"{path}:2"),
        ("next", f"{path}:5"),
    ]


def test_optional_columns_are_read_when_present(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": 1, "id": 7}\n{"text": "b", "label": 0}\n')
    split = read(path, optional=("id", "text_pair"), columns={})
    assert [r.values for r in split.rows] == [{"text": "a", "label": 1, "id": 7}, {"text": "b", "label": 0}]


# ---- the column mapping: a wrong mapping raises at once ----------------------------------------------


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_column_the_header_lacks_raises_even_with_skip(tmp_path, on_error):
    path = write(tmp_path / "dev.tsv", "sentence\tscore\nfine\t1\n")
    message = (
        f"{path}:2: no column 'label' (the row has: sentence, score); set data.columns.label=NAME to the "
        "column that holds it (the first line of a .tsv file is its header)"
    )
    with pytest.raises(DataError, match=re.escape(message) + "$"):
        read(path, split="dev", columns={"text": "sentence"}, on_error=on_error)


def test_a_mapped_column_the_first_row_lacks_names_the_mapping_and_a_close_match(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"sentence": "x", "gold_label": "a"}\n')
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{path}:1: no column 'gold' for label (the row has: sentence, "
            'gold_label) (did you mean "gold_label"?); set data.columns.label=NAME'
        ),
    ):
        read(path, columns={"text": "sentence", "label": "gold"}, on_error="skip")


def test_a_mapping_key_the_task_does_not_read_is_a_config_error(tmp_path):
    path = task_file(tmp_path, "jsonl")
    with pytest.raises(
        ConfigError, match=r"data\.columns\.lable: this task reads no column 'lable' \(did you mean"
    ):
        read(path, columns={"text": "sentence", "lable": "gold"})


# ---- bad rows: file:line, or skipped and counted -----------------------------------------------------

BAD_ROWS = {
    # name: (file name, content, the exact start of the message with {path})
    "jsonl later row lacks a column": (
        "a.jsonl",
        '{"text": "a", "label": 1}\n\n{"text": "b"}\n',
        "{path}:3: no column 'label' (the row has: text); set data.columns.label=NAME to the column that holds it",
    ),
    "malformed JSON": ("a.jsonl", '{"text": "a", "label": 1}\n{"text": oops}\n', "{path}:2: malformed JSON"),
    "not an object": (
        "a.jsonl",
        '{"text": "a", "label": 1}\n[1]\n',
        "{path}:2: expected a JSON object, got list",
    ),
    "invalid UTF-8": ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff"}\n', "{path}:2: invalid UTF-8"),
    "csv wrong field count": (
        "a.csv",
        "text,label\nok,1\nshort\n",
        "{path}:3: the row has 1 fields but the header (line 1) has 2; fix the row; a .csv file needs a header row",
    ),
    "empty text_pair": (
        "a.tsv",
        "text\ttext_pair\tlabel\na\tb\t1\nc\t  \t0\n",
        "{path}:3: text_pair is empty; fill it or remove the row",
    ),
    "empty text": (
        "a.jsonl",
        '{"text": "a", "label": 1}\n{"text": " ", "label": 1}\n',
        "{path}:2: text is empty",
    ),
    "null label": (
        "a.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n',
        "{path}:2: label is empty",
    ),
    "text not a string": (
        "a.jsonl",
        '{"text": "a", "label": 1}\n{"text": 5, "label": 1}\n',
        "{path}:2: text is int (5), not a string",
    ),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_rows_raise_with_file_and_line(tmp_path, case):
    name, content, start = BAD_ROWS[case]
    path = write(tmp_path / name, content)
    required = ("text", "text_pair", "label") if "text_pair" in start else ("text", "label")
    with pytest.raises(DataError, match="^" + re.escape(start.format(path=path))) as info:
        read(path, required=required, texts=("text", "text_pair"), columns={})
    assert "data.on_error=skip" in str(info.value)  # the message says how to get past it
    split = read(path, required=required, texts=("text", "text_pair"), columns={}, on_error="skip")
    assert len(split.rows) == 1 and split.skipped.total == 1


def test_skip_counts_per_reason_with_the_first_locations(tmp_path):
    lines = [
        '{"text": "a", "label": 1}',
        "{bad",
        '{"text": "b"}',
        "{bad",
        "{bad",
        "{bad",
        '{"text": "", "label": 0}',
    ]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    split = read(path, columns={}, on_error="skip")
    assert [r.values["text"] for r in split.rows] == ["a"]
    assert split.skipped.counts == {"malformed JSON": 4, "no column 'label'": 1, "empty text": 1}
    assert split.skipped.first["malformed JSON"] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert split.skipped.first["empty text"] == [f"{path}:7"]


def test_a_parquet_null_in_a_required_column_is_a_bad_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "label": [1, 0, None]}), path)
    with pytest.raises(DataError, match=re.escape(f"{path}: row 1: text is empty (null)")):
        read(str(path), columns={})
    split = read(str(path), columns={}, on_error="skip")
    assert [r.values for r in split.rows] == [{"text": "a", "label": 1}]
    assert split.skipped.counts == {"empty text": 1, "empty label": 1}


def test_a_corrupt_gzip_file_raises(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a", "label": 1}\n' * 200)[:40])
    with pytest.raises(DataError, match=re.escape(f"{path}: not a valid gzip file")):
        read(str(path), columns={}, on_error="skip")


# ---- empty splits, paths, slices, drop_labels --------------------------------------------------------


def test_an_empty_split_says_why(tmp_path):
    empty = write(tmp_path / "dev.tsv", "text\tlabel\n")
    with pytest.raises(
        DataError, match=re.escape(f"data.dev {empty} has no rows (0 skipped); the file is empty")
    ):
        read(empty, split="dev", columns={})
    bad = write(tmp_path / "dev.jsonl", "{bad\n{bad\n")
    message = (
        f"data.dev {bad} has no rows (2 skipped: skipped 2 × malformed JSON (first at {bad}:1, {bad}:2))"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        read(bad, split="dev", columns={}, on_error="skip")


def test_paths_that_do_not_exist_or_are_not_set(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=re.escape(f"data.test: {missing} does not exist")):
        read(missing, split="test", columns={})
    with pytest.raises(ConfigError, match=r"data\.dev is not set"):
        read_split(TaskDataConfig(train=missing), "dev", ("text",))
    with pytest.raises(DataError, match=r"data\.train: .* is a folder; .*data\.format=datasets"):
        read(str(tmp_path), columns={})
    with pytest.raises(ConfigError, match=r"cannot tell the format"):
        read(write(tmp_path / "a.txt", "x\n"), columns={})


@pytest.mark.parametrize(
    "rows, expected",
    [("1:3", ["b", "c"]), (":2", ["a", "b"]), ("-1:", ["d"]), ("2:", ["c", "d"]), (" : ", list("abcd"))],
)
def test_row_slices(tmp_path, rows, expected):
    path = write(tmp_path / "a.jsonl", "".join(f'{{"text": "{t}", "label": 0}}\n' for t in "abcd"))
    assert [r.values["text"] for r in read(path, columns={}, train_rows=rows).rows] == expected


@pytest.mark.parametrize("rows", ["1", "a:b", "1:2:3", 90])
def test_a_bad_slice_names_its_key(rows):
    with pytest.raises(ConfigError, match=r"^data\.dev_rows: expected"):
        TaskDataConfig(dev="x.jsonl", dev_rows=rows)


def test_a_slice_that_selects_nothing(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": 0}\n')
    with pytest.raises(
        DataError, match=re.escape(f"data.train {path} has no rows (data.train_rows=5: selects none")
    ):
        read(path, columns={}, train_rows="5:")


def test_drop_labels_drops_and_counts_before_the_slice(tmp_path):
    labels = ["neutral", "-", "entailment", "-", "contradiction"]
    path = write(
        tmp_path / "a.jsonl", "".join(json.dumps({"s": "x", "gold_label": g}) + "\n" for g in labels)
    )
    split = read(path, columns={"text": "s", "label": "gold_label"}, drop_labels=["-"], train_rows="1:")
    assert [r.values["label"] for r in split.rows] == ["entailment", "contradiction"]
    assert split.dropped == 2 and not split.skipped
    numbers = write(tmp_path / "b.jsonl", '{"text": "x", "label": -1}\n')  # compared as text: -1 is "-1"
    with pytest.raises(
        DataError, match=r"has no rows \(0 skipped; 1 dropped by data\.drop_labels\); every row's"
    ):
        read(numbers, columns={}, drop_labels=["-1"])


def test_config_validation():
    with pytest.raises(
        ConfigError, match=r'data\.format: unknown format .jsonlines. \(did you mean "jsonl"\?\)'
    ):
        TaskDataConfig(format="jsonlines")
    with pytest.raises(ConfigError, match=r"data\.on_error"):
        TaskDataConfig(on_error="ignore")


# ---- SQuAD-style QA ----------------------------------------------------------------------------------

SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "Fox",
            "paragraphs": [
                {
                    "context": "The quick brown fox jumps.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Who jumps?",
                            "answers": [{"text": "brown fox", "answer_start": 10}],
                        },
                        {
                            "id": "q2",
                            "question": "How?",
                            "answers": [
                                {"text": "quick", "answer_start": 4},
                                {"text": "quick", "answer_start": 4},
                            ],
                        },
                    ],
                }
            ],
        },
        {
            "title": "今天",
            "paragraphs": [
                {
                    "context": "今天天气真好",
                    "qas": [
                        {"id": "q3", "question": "天气?", "answers": [{"text": "真好", "answer_start": 4}]}
                    ],
                }
            ],
        },
    ],
}
QA = dict(
    required=("question", "context", "answers"), optional=("id", "title"), texts=("question", "context")
)


def test_squad_is_flattened_to_one_row_per_question(tmp_path):
    path = write(tmp_path / "dev.json.gz", json.dumps(SQUAD, ensure_ascii=False))
    split = read(path, **QA, columns={})
    assert [r.where for r in split.rows] == [f"{path}: question q{i}" for i in (1, 2, 3)]
    assert split.rows[1].values == {
        "question": "How?",
        "context": "The quick brown fox jumps.",
        "answers": {"text": ["quick", "quick"], "answer_start": [4, 4]},
        "id": "q2",
        "title": "Fox",
    }
    assert split.rows[2].values["answers"] == {"text": ["真好"], "answer_start": [4]}
    assert split.rows[2].values["title"] == "今天"


def test_an_answer_off_its_offset_is_a_bad_row(tmp_path):
    squad = copy.deepcopy(SQUAD)
    squad["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3  # 真好 is at 4
    path = write(tmp_path / "dev.json", json.dumps(squad, ensure_ascii=False))
    message = f"{path}: question q3: answer '真好' at answer_start 3 does not match the context there ('气真'); fix answer_start"
    with pytest.raises(DataError, match="^" + re.escape(message)):
        read(path, **QA, columns={})
    split = read(path, **QA, columns={}, on_error="skip")
    assert len(split.rows) == 2 and split.skipped.counts == {"answer not at its answer_start": 1}
    unchecked = read_split(TaskDataConfig(dev=path), "dev", **QA, check_answer_offsets=False)
    assert unchecked.rows[2].values["answers"] == {"text": ["真好"], "answer_start": [3]}
    squad_format = read_split(TaskDataConfig(dev=path, format="squad", on_error="skip"), "dev", **QA)
    assert len(squad_format.rows) == 2


def test_qa_rows_from_jsonl_are_normalized_and_checked(tmp_path):
    rows = [
        {"question": "q?", "context": "abc", "answers": [{"text": "b", "answer_start": 1}]},
        {"question": "q?", "context": "abc", "answers": {"text": ["c"], "answer_start": [0]}},
    ]
    path = write(tmp_path / "qa.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError,
        match=re.escape(f"{path}:2: answer 'c' at answer_start 0 does not match the context there ('a')"),
    ):
        read(path, **QA, columns={})
    split = read(path, **QA, columns={}, on_error="skip")
    assert split.rows[0].values["answers"] == {"text": ["b"], "answer_start": [1]}


# ---- datasets: save_to_disk folders and load_dataset files --------------------------------------------


@pytest.fixture
def datasets_lib(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    datasets.disable_progress_bars()
    return datasets


def test_a_datasets_folder_picks_the_split_by_name(tmp_path, datasets_lib):
    ds = datasets_lib
    folder = tmp_path / "sst2"
    ds.DatasetDict(
        train=ds.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]}),
        validation=ds.Dataset.from_dict({"sentence": ["c"], "label": [1]}),
    ).save_to_disk(str(folder))
    config = TaskDataConfig(
        train=str(folder), dev=str(folder), test=str(folder), columns={"text": "sentence"}
    )
    dev = read_split(config, "dev", ("text", "label"), texts=("text",))  # format auto: a save_to_disk folder
    assert [(r.values, r.where) for r in dev.rows] == [
        ({"text": "c", "label": 1}, f"{folder}/validation: row 0")
    ]
    assert len(read_split(config, "train", ("text", "label")).rows) == 2
    with pytest.raises(
        DataError, match=re.escape(f"data.test: {folder} has no split 'test' (its splits: train, validation)")
    ):
        read_split(config, "test", ("text",))
    single = tmp_path / "one"
    ds.Dataset.from_dict({"text": ["x"], "label": ["pos"]}).save_to_disk(str(single))
    rows = read_split(TaskDataConfig(test=str(single), format="datasets"), "test", ("text", "label")).rows
    assert [(r.values, r.where) for r in rows] == [({"text": "x", "label": "pos"}, f"{single}: row 0")]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_format_datasets_reads_a_file_with_load_dataset(tmp_path, datasets_lib, fmt):
    path = task_file(tmp_path, fmt)
    split = read(path, format="datasets")
    assert [(r.values["text"], r.values["label"]) for r in split.rows] == ROWS
    assert split.rows[2].where == f"{path}: row 2"


def test_format_datasets_without_the_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(
        ConfigError,
        match=re.escape("format datasets needs the datasets package: pip install 'plmkit[datasets]'"),
    ):
        read(task_file(tmp_path, "jsonl"), format="datasets")


# ---- the shared data (present in CI) -------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (it is present in CI)")
def test_the_shared_task_files():
    sst2 = read_split(
        TaskDataConfig(dev=str(SHARED_DATA / "sst2" / "dev.tsv"), columns={"text": "sentence"}),
        "dev",
        ("text", "label"),
        texts=("text",),
    )
    assert len(sst2.rows) == 872 and {r.values["label"] for r in sst2.rows} == {"0", "1"}
    snli_path = SHARED_DATA / "snli_subset" / "snli_1.0_dev_first1289.jsonl"
    snli = read_split(
        TaskDataConfig(
            dev=str(snli_path),
            columns={"text": "sentence1", "text_pair": "sentence2", "label": "gold_label"},
            drop_labels=["-"],
        ),
        "dev",
        ("text", "text_pair", "label"),
        texts=("text", "text_pair"),
    )
    assert len(snli.rows) + snli.dropped == 1289 and snli.dropped > 0 and not snli.skipped
    assert {r.values["label"] for r in snli.rows} == {"entailment", "neutral", "contradiction"}
    squad = read_split(
        TaskDataConfig(dev=str(SHARED_DATA / "squad_v1.1_dev_subset" / "dev_subset_24articles.json")),
        "dev",
        **QA,
    )
    assert len(squad.rows) == 4961 and not squad.skipped  # every answer is at its answer_start
    cmrc = read_split(
        TaskDataConfig(dev=str(SHARED_DATA / "cmrc2018_dev" / "dev.json"), on_error="skip"), "dev", **QA
    )
    # 200 of CMRC's 9,657 answers are not at their answer_start (193 of them: -1), in 176 questions; only
    # the first answer (the one training learns) is checked, and 3 first answers are wrong
    assert len(cmrc.rows) == 3219 - 3 and cmrc.skipped.counts == {"answer not at its answer_start": 3}
