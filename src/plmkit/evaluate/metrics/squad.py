"""SQuAD exact match and token F1, as defined by the official SQuAD v1.1 script (evaluate-v1.1.py).

Answers are normalized (lower case, ASCII punctuation `string.punctuation` removed, articles a / an / the
removed, whitespace collapsed); a question scores the best value over its gold answers; the corpus scores
are 100 x the mean over the questions. Other punctuation (Unicode quotes, CJK marks) stays, as in the script.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from plmkit.errors import DataError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, then articles, then collapse whitespace (the script's order)."""
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """Whether the normalized strings are equal."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """F1 of the bag-of-tokens overlap of the normalized strings (0 when nothing is shared)."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    same = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(
    metric: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    """The metric's best value over the gold answers (the script's metric_max_over_ground_truths)."""
    return max(float(metric(prediction, truth)) for truth in ground_truths)


def squad_scores(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict:
    """{exact_match, f1} in 0..100 over the questions of `answers` (question id -> gold answer texts), and
    `missing`: how many of them have no prediction (each scores 0, as the official script counts them).
    Predictions for ids not in `answers` are ignored."""
    if not answers:
        raise DataError("squad: no questions to score; give at least one question id with its gold answers")
    exact = f1 = 0.0
    missing = 0
    for qid, golds in answers.items():
        if isinstance(golds, str) or not golds:
            raise DataError(
                f"squad: question {qid!r} needs a non-empty list of gold answer texts, got {golds!r}"
            )
        if qid not in predictions:
            missing += 1
            continue
        exact += best_over_golds(exact_match_score, predictions[qid], golds)
        f1 += best_over_golds(f1_score, predictions[qid], golds)
    total = len(answers)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total, "missing": missing}
