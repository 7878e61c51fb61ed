"""CSC metrics by hand from the ReaLiSe sentence-level definitions and the character-level ones."""

from __future__ import annotations

import pytest

from plmkit.errors import DataError
from plmkit.evaluate.metrics import csc_scores
from plmkit.evaluate.metrics.csc import edits

CORRECT = "我们今天下午去公园散步"  # 11 characters, the target of every row below


def misspell(text: str, changes: dict[int, str]) -> str:
    chars = list(text)
    for i, char in changes.items():
        assert chars[i] != char
        chars[i] = char
    return "".join(chars)


def row(source_changes: dict[int, str], prediction_changes: dict[int, str]) -> tuple[str, str, str]:
    """(source, prediction, target): the source misspells CORRECT at `source_changes`; the prediction
    is CORRECT with `prediction_changes` applied on top (so {} = a perfect correction)."""
    return misspell(CORRECT, source_changes), misspell(CORRECT, prediction_changes), CORRECT


def test_edits():
    assert edits("abcd", "abxd") == [(2, "x")]
    assert edits("abcd", "abcd") == []


def test_thirty_sentences_give_81_25_and_86_67():
    """P = R = 13/16 = 81.25 needs 16 sentences with predicted edits and 16 with gold edits, so the case
    the brief sketched (15 sentences) cannot exist; 30 sentences give both numbers at once:
      13 fixed exactly (10 with one error, 3 with two)       -> hits, in pred_p and targ_p
       2 edited at the wrong position (gold 1, predicted 5)   -> in pred_p and targ_p, no hit
       1 error missed (prediction = source)                   -> in targ_p only
       1 false alarm on an error-free sentence                -> in pred_p only
      13 error-free and left alone                            -> hits (accuracy), in neither
    pred_p = targ_p = 16, tp = 13: P = R = F1 = 81.25; accuracy = (13 + 13) / 30 = 86.67.
    Character level: gold edits 10 + 6 + 2 + 1 = 19, predicted 10 + 6 + 2 + 1 = 19, right 16 -> 84.21."""
    rows = (
        [row({3: "田"}, {}) for _ in range(10)]
        + [row({0: "窝", 8: "圆"}, {}) for _ in range(3)]
        + [row({1: "门"}, {1: "门", 5: "舞"}) for _ in range(2)]
        + [row({2: "金"}, {2: "金"})]
        + [row({}, {9: "伞"})]
        + [row({}, {}) for _ in range(13)]
    )
    assert len(rows) == 30  # the wrong-position rows keep the error at 1 and edit 5 instead
    scores = csc_scores(*zip(*rows))
    for level in ("detection", "correction"):
        for key in ("precision", "recall", "f1"):
            assert scores[f"sentence_{level}_{key}"] == pytest.approx(81.25), (level, key)
        assert round(scores[f"sentence_{level}_accuracy"], 2) == 86.67
    for level in ("detection", "correction"):
        for key in ("precision", "recall", "f1"):
            assert scores[f"char_{level}_{key}"] == pytest.approx(100 * 16 / 19), (level, key)
    assert scores["sentences"] == 30
    convention = "ReaLiSe / CCL2022-CLTC sentence level; character level over edited positions"
    assert scores["convention"] == convention


def test_right_position_wrong_character_detects_but_does_not_correct():
    rows = [
        row({3: "田"}, {3: "甜"}),  # detected at 3, corrected to the wrong character
        row({4: "夏"}, {}),  # fixed
        row({}, {}),  # clean
        row({0: "窝", 8: "圆"}, {0: "窝"}),  # one of two errors fixed: positions differ -> no hit
    ]
    scores = csc_scores(*zip(*rows))
    # predicted-edit sentences: rows 0, 1, 3 (row 3's prediction edits 8) -> 3; gold-error sentences: 0, 1, 3 -> 3
    assert scores["sentence_detection_precision"] == pytest.approx(100 * 2 / 3)  # rows 0, 1
    assert scores["sentence_detection_recall"] == pytest.approx(100 * 2 / 3)
    assert scores["sentence_correction_precision"] == pytest.approx(100 * 1 / 3)  # row 1
    assert scores["sentence_correction_f1"] == pytest.approx(100 * 1 / 3)
    assert scores["sentence_detection_accuracy"] == pytest.approx(100 * 3 / 4)  # rows 0, 1, 2
    assert scores["sentence_correction_accuracy"] == pytest.approx(100 * 2 / 4)  # rows 1, 2
    # characters: gold edits 1 + 1 + 2 = 4; predicted 1 + 1 + 1 = 3 (row 3 edits 8 only);
    # detection tp 3 (3, 4, 8), correction tp 2 (4, 8)
    assert scores["char_detection_precision"] == pytest.approx(100.0)
    assert scores["char_detection_recall"] == pytest.approx(75.0)
    assert scores["char_correction_precision"] == pytest.approx(100 * 2 / 3)
    assert scores["char_correction_recall"] == pytest.approx(50.0)
    assert scores["char_correction_f1"] == pytest.approx(100 * 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_copying_the_input_scores_zero():
    rows = [row({3: "田"}, {}), row({}, {}), row({0: "窝"}, {}), row({}, {}), row({}, {})]
    sources, _, targets = zip(*rows)
    scores = csc_scores(sources, sources, targets)
    for key, value in scores.items():
        if key.endswith(("precision", "recall", "f1")):
            assert value == 0.0, key
    # 3 error-free sentences of 5
    assert scores["sentence_detection_accuracy"] == scores["sentence_correction_accuracy"] == 60.0


def test_perfect_predictions():
    rows = [row({3: "田"}, {}), row({}, {})]
    sources, _, targets = zip(*rows)
    scores = csc_scores(sources, targets, targets)
    assert all(scores[k] == 100.0 for k in scores if k.endswith(("precision", "recall", "f1", "accuracy")))


def test_bad_rows_raise_data_error():
    with pytest.raises(DataError, match="row 1 has source / prediction / target lengths 2 / 3 / 2"):
        csc_scores(["ab", "cd"], ["ab", "cde"], ["ab", "cd"])
    with pytest.raises(DataError, match="2 sources, 1 predictions and 2 targets"):
        csc_scores(["ab", "cd"], ["ab"], ["ab", "cd"])
    with pytest.raises(DataError, match="no sentences"):
        csc_scores([], [], [])
