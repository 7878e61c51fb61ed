"""Accuracy / macro F1 / MCC equal scikit-learn's; Pearson / Spearman / MSE equal scipy's and numpy's."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from plmkit.errors import DataError
from plmkit.evaluate.metrics import classification_metrics, regression_metrics


def sklearn_scores(predictions, references) -> dict[str, float]:
    # zero_division and one-class MCC warnings: the values are what we test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": accuracy_score(references, predictions),
            "macro_f1": f1_score(references, predictions, average="macro"),
            "mcc": matthews_corrcoef(references, predictions),
        }


def assert_close(ours: dict, theirs: dict, tol: float = 1e-12) -> None:
    assert ours.keys() >= theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(float(value), abs=tol, rel=0), key


@pytest.mark.parametrize("seed", range(40))
def test_random_draws_equal_sklearn(seed):
    rng = random.Random(seed)
    n_labels = rng.randint(2, 6)
    n = rng.randint(1, 60)
    references = [rng.randrange(n_labels) for _ in range(n)]
    # mostly right, sometimes a label only the predictions use (n_labels)
    predictions = [t if rng.random() < 0.6 else rng.randrange(n_labels + 1) for t in references]
    assert_close(classification_metrics(predictions, references), sklearn_scores(predictions, references))


@pytest.mark.parametrize(
    ("predictions", "references"),
    [
        ([1, 1, 1], [1, 1, 1]),  # one class on both sides: mcc 0, F1 1
        ([0, 0, 0, 0], [0, 1, 0, 1]),  # constant predictions: mcc 0
        ([0, 1, 0, 1], [1, 1, 1, 1]),  # constant references: mcc 0
        ([1, 0], [0, 1]),  # all wrong: mcc -1, F1 0
        ([2, 2, 3], [0, 1, 1]),  # no overlap between the label sets
        ([0], [0]),
        (["pos", "neg", "neg"], ["pos", "pos", "neg"]),  # string labels
    ],
)
def test_edge_cases_equal_sklearn(predictions, references):
    assert_close(classification_metrics(predictions, references), sklearn_scores(predictions, references))


def test_values_by_hand():
    scores = classification_metrics([1, 1, 1], [1, 1, 1])
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 0.0}
    scores = classification_metrics([1, 0], [0, 1])
    assert scores["mcc"] == -1.0 and scores["macro_f1"] == 0.0 and scores["accuracy"] == 0.0


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="2 predictions for 3 references"):
        classification_metrics([0, 1], [0, 1, 1])
    with pytest.raises(DataError, match="no references"):
        classification_metrics([], [])
    with pytest.raises(DataError, match="1 predictions for 2 references"):
        regression_metrics([0.5], [0.5, 1.0])


@pytest.mark.parametrize("seed", range(20))
def test_regression_equals_scipy(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 40)
    references = [rng.uniform(0, 5) for _ in range(n)]
    if seed % 2:  # STS-B style rounded scores: many ties for the average ranks
        references = [round(x * 2) / 2 for x in references]
    predictions = [x + rng.gauss(0, 1) for x in references]
    if seed % 3 == 0:
        predictions = [round(x) for x in predictions]
    scores = regression_metrics(predictions, references)
    assert scores["pearson"] == pytest.approx(stats.pearsonr(predictions, references)[0], abs=1e-12)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(predictions, references)[0], abs=1e-12)
    mse = sum((p - r) ** 2 for p, r in zip(predictions, references)) / n
    assert scores["mse"] == pytest.approx(mse, rel=1e-12)


def test_regression_by_hand():
    scores = regression_metrics([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert scores["pearson"] == pytest.approx(1.0) and scores["spearman"] == pytest.approx(1.0)
    assert scores["mse"] == pytest.approx((1 + 4 + 9) / 3)
    # ranks with ties: [1, 2.5, 2.5, 4] against [4, 3, 2, 1] -> a perfect reversal but for the tie
    scores = regression_metrics([1, 2, 2, 3], [4, 3, 2, 1])
    assert scores["spearman"] == pytest.approx(stats.spearmanr([1, 2, 2, 3], [4, 3, 2, 1])[0], abs=1e-12)
    assert -1 < scores["spearman"] < -0.9


def test_constant_input_gives_nan_like_scipy():
    scores = regression_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert math.isnan(scores["pearson"]) and math.isnan(scores["spearman"])
    assert scores["mse"] == pytest.approx(5 / 3)
