"""Sentence-classification and regression metrics (GLUE / CLUE style), as fractions in 0..1.

Each equals its reference: accuracy, macro F1 and MCC equal scikit-learn's `accuracy_score`,
`f1_score(average="macro")` and `matthews_corrcoef`; Pearson and Spearman equal `scipy.stats.pearsonr`
and `scipy.stats.spearmanr` (average ranks for ties).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from plmkit.errors import DataError


def _check_pair(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise DataError(
            f"metrics: {len(predictions)} predictions for {len(references)} references; give one prediction per reference"
        )
    if not references:
        raise DataError("metrics: no references to score; give at least one (prediction, reference) pair")


def _macro_f1(pairs: Counter, predictions: Sequence, references: Sequence) -> float:
    """Unweighted mean over the labels seen in either list of F1 = 2 tp / (2 tp + fp + fn), which is 0
    for a label never predicted correctly (sklearn's zero_division default)."""
    predicted, gold = Counter(predictions), Counter(references)
    labels = set(predicted) | set(gold)
    scores = []
    for label in labels:
        tp = pairs[(label, label)]
        scores.append(2 * tp / (predicted[label] + gold[label]))  # 2tp + fp + fn
    return float(sum(scores) / len(scores))


def _mcc(pairs: Counter, predictions: Sequence, references: Sequence) -> float:
    """Matthews correlation, multi-class (Gorodkin's R_K, as sklearn): from the confusion counts,
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)); 0 when either side has one class."""
    predicted, gold = Counter(predictions), Counter(references)
    samples = len(references)
    correct = sum(n for (p, t), n in pairs.items() if p == t)
    labels = set(predicted) | set(gold)
    cov_pt = correct * samples - sum(predicted[k] * gold[k] for k in labels)  # exact integers
    cov_pp = samples * samples - sum(n * n for n in predicted.values())
    cov_tt = samples * samples - sum(n * n for n in gold.values())
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_pt / math.sqrt(cov_tt * cov_pp))


def classification_metrics(
    predictions: Sequence[Hashable], references: Sequence[Hashable]
) -> dict[str, float]:
    """{accuracy, macro_f1, mcc} of predicted against gold labels (any hashable labels, ints usually)."""
    _check_pair(predictions, references)
    pairs = Counter(zip(predictions, references))  # (predicted, gold) -> count: the confusion matrix
    correct = sum(n for (p, t), n in pairs.items() if p == t)
    return {
        "accuracy": correct / len(references),
        "macro_f1": _macro_f1(pairs, predictions, references),
        "mcc": _mcc(pairs, predictions, references),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (scipy.stats.rankdata "average")."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # [n] -> start index of each run of equal values, plus n at the end
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1], True])
    run_ranks = (starts[:-1] + starts[1:] + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, np.diff(starts))
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; nan when either side is constant (as scipy, which also warns)."""
    xc, yc = x - x.mean(), y - y.mean()
    norm_x, norm_y = np.linalg.norm(xc), np.linalg.norm(yc)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    r = float(np.dot(xc / norm_x, yc / norm_y))
    return max(-1.0, min(1.0, r))  # rounding may step just past +-1


def regression_metrics(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """{pearson, spearman, mse} of predicted against gold scores (STS-B style). Pearson / Spearman are
    nan when either side is constant, like scipy's."""
    _check_pair(predictions, references)
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    return {
        "pearson": _pearson(x, y),
        "spearman": _pearson(_average_ranks(x), _average_ranks(y)),
        "mse": float(np.mean((x - y) ** 2)),
    }
