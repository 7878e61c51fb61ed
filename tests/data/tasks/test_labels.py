"""Label vocabularies: ordering, encode / decode, unknown labels with file:line, labels.json round trip,
regression targets."""

from __future__ import annotations

import json
import re

import pytest

from plmkit.data.tasks import LabelVocab, Row, label_name, regression_targets
from plmkit.errors import CheckpointError, DataError, ShapeError


def rows(*labels, column="label"):
    return [Row({"text": "x", column: label}, f"train.jsonl:{i + 1}") for i, label in enumerate(labels)]


def test_int_like_labels_sort_numerically_and_others_as_strings():
    assert LabelVocab.from_rows(rows("10", "2", "-1", "0", "2")).names == ["-1", "0", "2", "10"]
    assert LabelVocab.from_rows(rows(1, 0, 1.0, "3")).names == ["0", "1", "3"]  # 1, 1.0 and "1" are one class
    assert LabelVocab.from_rows(rows("pos", "neg", "10", "2")).names == ["10", "2", "neg", "pos"]


def test_string_labels_are_ordered_like_sklearns_label_encoder():
    from sklearn.preprocessing import LabelEncoder

    labels = ["neutral", "entailment", "contradiction", "entailment", "Neutral", "中性"]
    vocab = LabelVocab.from_rows(rows(*labels))
    assert vocab.names == list(LabelEncoder().fit(labels).classes_)
    assert [vocab.encode(x, "w") for x in labels] == list(LabelEncoder().fit_transform(labels))


def test_list_valued_columns_contribute_each_element():
    vocab = LabelVocab.from_rows(rows(["O", "B-PER", "I-PER"], ["O", "B-LOC"], column="tags"), column="tags")
    assert vocab.names == ["B-LOC", "B-PER", "I-PER", "O"] and len(vocab) == 4


def test_encode_decode():
    vocab = LabelVocab.from_rows(rows("0", "1"))
    assert (
        vocab.encode(1, "dev.tsv:2") == 1 and vocab.encode("0", "dev.tsv:3") == 0
    )  # a .jsonl 1 is a .tsv "1"
    assert vocab.decode(1) == "1"
    with pytest.raises(ShapeError, match="class id 2 is out of range for 2 labels"):
        vocab.decode(2)
    assert label_name(True) == "true" and label_name(2.0) == "2" and label_name(0.5) == "0.5"


def test_an_unknown_label_names_the_row_and_the_label_set():
    vocab = LabelVocab.from_rows(rows("pos", "neg"))
    message = (
        "dev.jsonl:7: label 'x' is not in the label set built from the train split (neg, pos); "
        "fix the row or add rows with that label to data.train"
    )
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        vocab.encode("x", "dev.jsonl:7")
    many = LabelVocab([f"c{i:02d}" for i in range(12)])
    with pytest.raises(DataError, match=re.escape("(c00, c01, c02, c03, c04, c05, c06, c07, c08, c09, ...)")):
        many.encode("c12", "dev.jsonl:1")
    with pytest.raises(
        DataError, match=re.escape("dev.jsonl:2: label {'a': 1}: a label is a string or a number")
    ):
        vocab.encode({"a": 1}, "dev.jsonl:2")


def test_building_from_rows_without_labels():
    with pytest.raises(DataError, match=re.escape("train.jsonl:2: no label; every train row needs one")):
        LabelVocab.from_rows([*rows("a"), Row({"text": "y"}, "train.jsonl:2")])
    with pytest.raises(DataError, match=re.escape("data/train.jsonl: no tags values")):
        LabelVocab.from_rows(rows([], column="tags"), column="tags", split_path="data/train.jsonl")
    with pytest.raises(DataError, match="repeated: a"):
        LabelVocab(["a", "b", "a"])


def test_save_and_load_round_trip(tmp_path):
    vocab = LabelVocab(["负面", "正面"])
    vocab.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "labels.json").read_text(encoding="utf-8")) == {
        "names": ["负面", "正面"]
    }
    assert LabelVocab.load(tmp_path / "run") == vocab
    assert LabelVocab.from_dict(vocab.to_dict()).names == ["负面", "正面"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["labels.json"]  # no temporary file left


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "labels.json does not exist"),
        ("{not json", "labels.json is corrupt"),
        ('{"names": [1, 2]}', r"labels\.json is corrupt: a label set is"),
        ('{"names": ["a", "a"]}', r"labels\.json is corrupt: .*repeated: a"),
    ],
)
def test_a_missing_or_bad_labels_file_names_it(tmp_path, content, pattern):
    if content is not None:
        (tmp_path / "labels.json").write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path)) + ".*" + pattern):
        LabelVocab.load(tmp_path)


def test_regression_targets():
    assert regression_targets(rows(1, "3.8", 2.5, " 4 ")) == [1.0, 3.8, 2.5, 4.0]
    assert regression_targets(rows(0.5, column="score"), column="score") == [0.5]
    with pytest.raises(DataError, match=re.escape("train.jsonl:2: label 'high' is not a number")):
        regression_targets(rows(1, "high"))
    with pytest.raises(DataError, match=re.escape("train.jsonl:1: label None is not a number")):
        regression_targets(rows(None))
    with pytest.raises(DataError, match=re.escape("train.jsonl:2: label 'nan' is not a finite number")):
        regression_targets(rows(1, "nan"))
