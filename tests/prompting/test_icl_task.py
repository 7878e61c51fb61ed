"""IclTask on the evaluate Task protocol (predictions = argmax of the label-word scores, calibrated or not,
and the metrics of plmkit.evaluate), accuracy against shots with its plot, and order sensitivity."""

from __future__ import annotations

import sys

import icl_helpers as h
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from plmkit.data.sources import SkipReport
from plmkit.data.tasks import LabelVocab, TaskSplit
from plmkit.errors import ConfigError
from plmkit.evaluate.tasks.run import evaluate_split
from plmkit.prompting.calibration import calibrate, label_probs
from plmkit.prompting.icl import IclConfig, build_prompts, content_free_probs, label_word_scores
from plmkit.prompting.icl_task import (
    IclTask,
    accuracy_vs_shots,
    evaluate_icl,
    order_sensitivity,
    plot_accuracy_vs_shots,
)

TRAIN = h.rows()
DEV = TaskSplit("dev", "dev.tsv", h.rows(h.DEV, "dev.tsv"), SkipReport())
GOLD = [int(y) for _, y in h.DEV]
LABELS = LabelVocab(["0", "1"])


@pytest.fixture(scope="module")
def lm():
    return h.tokenizer(), h.lm()


def config(**kw) -> IclConfig:
    return IclConfig(**{"shots": 2, "label_words": h.WORDS, **kw})


def probs_by_hand(model, tok, cfg: IclConfig, **kw) -> torch.Tensor:
    prompts = [p.text for p in build_prompts(cfg, TRAIN, [t for t, _ in h.DEV], **kw)]
    return label_probs(label_word_scores(model, tok, prompts, cfg, LABELS))


def test_predictions_and_metrics(lm):
    tok, model = lm
    cfg = config()
    task = IclTask(cfg, tok, TRAIN)
    result = evaluate_split(task, model, DEV)
    probs = probs_by_hand(model, tok, cfg)
    predicted = probs.argmax(-1).tolist()
    assert [p.label for p in result.predictions] == predicted
    torch.testing.assert_close(
        torch.tensor([p.probs for p in result.predictions], dtype=torch.float64), probs
    )
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(GOLD, predicted))
    assert result.metrics["macro_f1"] == pytest.approx(f1_score(GOLD, predicted, average="macro"))
    share = predicted.count(1) / len(predicted)
    assert (result.metrics["predicted_0"], result.metrics["predicted_1"]) == pytest.approx((1 - share, share))
    assert not any(k.startswith("uncalibrated") for k in result.metrics)
    record = result.records[0]
    assert record["where"] == "dev.tsv:2" and record["label"] == "1"
    assert record["prediction"] == ["0", "1"][predicted[0]] and set(record["probs"]) == {"0", "1"}


def test_calibrated_predictions_report_both_distributions(lm):
    tok, model = lm
    cfg = config(calibrate=True, selection="fixed", fixed_indices=[1, 2])
    result = evaluate_split(IclTask(cfg, tok, TRAIN), model, DEV)
    probs = probs_by_hand(model, tok, cfg)
    p_cf = content_free_probs(model, tok, cfg, TRAIN, [1, 2])
    calibrated = calibrate(probs, p_cf)
    assert [p.label for p in result.predictions] == calibrated.argmax(-1).tolist()
    assert [p.uncalibrated for p in result.predictions] == probs.argmax(-1).tolist()
    torch.testing.assert_close(
        torch.tensor([p.calibrated for p in result.predictions], dtype=torch.float64), calibrated
    )
    uncalibrated = probs.argmax(-1).tolist()
    assert result.metrics["uncalibrated_accuracy"] == pytest.approx(accuracy_score(GOLD, uncalibrated))
    assert result.metrics["uncalibrated_predicted_1"] == pytest.approx(uncalibrated.count(1) / 4)
    assert result.metrics["predicted_0"] + result.metrics["predicted_1"] == pytest.approx(1.0)
    assert "calibrated" in result.records[0] and "uncalibrated" in result.records[0]


def test_knn_task_with_injected_embeddings(lm):
    tok, model = lm
    cfg = config(selection="knn", order="similar_last")
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]])
    task = IclTask(cfg, tok, TRAIN, train_embeddings=h.TRAIN_VECTORS)
    features = task.features(DEV, query_embeddings=queries)
    assert [f["demonstrations"] for f in features][:2] == [[2, 0], [3, 1]]
    result = evaluate_split(task, model, DEV, features)
    expected = probs_by_hand(model, tok, cfg, embeddings=(h.TRAIN_VECTORS, queries)).argmax(-1).tolist()
    assert [p.label for p in result.predictions] == expected
    with pytest.raises(ConfigError, match="give encoder="):
        IclTask(cfg, tok, TRAIN)


def test_the_task_does_not_train(lm):
    tok, model = lm
    task = IclTask(config(), tok, TRAIN)
    with pytest.raises(ConfigError, match="does not train"):
        task({"model": model}, {})
    with pytest.raises(ConfigError, match="build IclTask with family='causal'"):
        IclTask(config(), tok, TRAIN, family="seq2seq").check_model(model, "m")
    with pytest.raises(ConfigError, match="not a masked one"):
        IclTask(config(), tok, TRAIN, family="masked")


def test_accuracy_vs_shots_and_its_plot(lm, tmp_path):
    tok, model = lm
    cfg = config(calibrate=True)
    results = accuracy_vs_shots(model, tok, TRAIN, DEV, [0, 1, 4], config=cfg)
    assert results["shots"] == [0, 1, 4]
    for k, accuracy, uncalibrated in zip(
        results["shots"], results["accuracy"], results["uncalibrated_accuracy"]
    ):
        metrics = evaluate_icl(
            model, tok, TRAIN, DEV, IclConfig(shots=k, label_words=h.WORDS, calibrate=True)
        ).metrics
        assert (accuracy, uncalibrated) == (metrics["accuracy"], metrics["uncalibrated_accuracy"])
    path = plot_accuracy_vs_shots(results, tmp_path / "icl.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="shots=9 but the train split"):
        accuracy_vs_shots(model, tok, TRAIN, DEV, [0, 9], config=cfg)


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        assert plot_accuracy_vs_shots({"shots": [0], "accuracy": [0.5]}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_order_sensitivity(lm):
    tok, model = lm
    cfg = config(shots=3, selection="fixed", fixed_indices=[0, 1, 3])
    out = order_sensitivity(model, tok, TRAIN, DEV, cfg, permutations=4)
    assert out["orders"][0] == [0, 1, 2] and len({tuple(o) for o in out["orders"]}) == 4
    by_hand = []
    for order in out["orders"]:
        fixed = config(shots=3, selection="fixed", fixed_indices=[[0, 1, 3][i] for i in order])
        by_hand.append(evaluate_icl(model, tok, TRAIN, DEV, fixed).metrics["accuracy"])
    assert out["accuracies"] == by_hand
    assert (out["mean"], out["std"], out["min"], out["max"]) == pytest.approx(
        (np.mean(by_hand), np.std(by_hand), min(by_hand), max(by_hand))
    )
    with pytest.raises(ConfigError, match="3 demonstrations have 6 orders"):
        order_sensitivity(model, tok, TRAIN, DEV, cfg, permutations=7)
