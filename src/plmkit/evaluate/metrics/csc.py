"""Chinese spelling correction (CSC) metrics in 0..100: sentence level as ReaLiSe's `sent_metric_detect` /
`sent_metric_correct` (the convention of the CCL2022-CLTC track and most SIGHAN papers since), and
character level over edited positions.

Source, prediction and target of a row have the same length (CSC replaces characters, never inserts or
deletes). The edits of a sentence are [(i, char)] where it differs from the source.
"""

from __future__ import annotations

from collections.abc import Sequence

from plmkit.errors import DataError

CONVENTION = "ReaLiSe / CCL2022-CLTC sentence level; character level over edited positions"

Edit = tuple[int, str]  # (position, character)


def edits(source: str, sentence: str) -> list[Edit]:
    """[(i, sentence[i])] for every position where `sentence` differs from `source`."""
    return [(i, char) for i, (old, char) in enumerate(zip(source, sentence)) if old != char]


def _prf(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Precision, recall, F1 in 0..100; 0 where a denominator is 0."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100.0 * precision, "recall": 100.0 * recall, "f1": 100.0 * f1}


def _check_rows(sources: Sequence[str], predictions: Sequence[str], targets: Sequence[str]) -> None:
    if not len(sources) == len(predictions) == len(targets):
        raise DataError(
            f"csc: {len(sources)} sources, {len(predictions)} predictions and {len(targets)} targets; give one of each per row"
        )
    if not sources:
        raise DataError("csc: no sentences to score; give at least one (source, prediction, target) row")
    for row, (source, prediction, target) in enumerate(zip(sources, predictions, targets)):
        if not len(source) == len(prediction) == len(target):
            raise DataError(
                f"csc: row {row} has source / prediction / target lengths {len(source)} / {len(prediction)} / {len(target)}; spelling correction keeps the length, so align them (or drop the row)"
            )


def csc_scores(sources: Sequence[str], predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """Sentence-level detection / correction precision, recall, F1 and accuracy, and character-level
    detection / correction precision, recall, F1 (keys `sentence_detection_f1`, `char_correction_recall`,
    ...), `sentences` and `convention`.

    Sentence level: a sentence is a detection hit when its predicted edit positions equal the gold ones,
    a correction hit when its predicted edits (position, char) equal them; precision divides the hits
    among sentences with predicted edits by those sentences, recall by the sentences with gold edits;
    accuracy counts every hit, error-free sentences left untouched included, over all sentences.
    Character level: detection counts predicted edited positions that are gold error positions,
    correction predicted edits equal to a gold edit; precision divides by all predicted edits, recall by
    all gold edits.
    """
    _check_rows(sources, predictions, targets)
    gold_sentences = pred_sentences = 0
    detect_tp = correct_tp = detect_hit = correct_hit = 0  # sentence level
    gold_chars = pred_chars = char_detect_tp = char_correct_tp = 0  # character level
    for source, prediction, target in zip(sources, predictions, targets):
        gold, pred = edits(source, target), edits(source, prediction)
        same_positions = [i for i, _ in gold] == [i for i, _ in pred]
        same_edits = gold == pred
        gold_sentences += bool(gold)
        pred_sentences += bool(pred)
        detect_hit += same_positions
        correct_hit += same_edits
        detect_tp += bool(pred) and same_positions
        correct_tp += bool(pred) and same_edits

        gold_positions = {i for i, _ in gold}
        gold_chars += len(gold)
        pred_chars += len(pred)
        char_detect_tp += sum(i in gold_positions for i, _ in pred)
        char_correct_tp += len(set(gold) & set(pred))

    n = len(sources)
    scores: dict = {}
    for name, values in [
        ("sentence_detection", _prf(detect_tp, pred_sentences, gold_sentences)),
        ("sentence_correction", _prf(correct_tp, pred_sentences, gold_sentences)),
        ("char_detection", _prf(char_detect_tp, pred_chars, gold_chars)),
        ("char_correction", _prf(char_correct_tp, pred_chars, gold_chars)),
    ]:
        scores.update({f"{name}_{key}": value for key, value in values.items()})
    scores["sentence_detection_accuracy"] = 100.0 * detect_hit / n
    scores["sentence_correction_accuracy"] = 100.0 * correct_hit / n
    scores["sentences"] = n
    scores["convention"] = CONVENTION
    return scores
