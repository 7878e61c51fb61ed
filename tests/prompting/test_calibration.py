"""Contextual calibration on hand-made probability vectors: W·p normalised, with W = diag(p_cf)^-1."""

from __future__ import annotations

import icl_helpers as h
import pytest
import torch

from plmkit.errors import ShapeError
from plmkit.prompting.calibration import calibrate, content_free_inputs, label_distribution, label_probs


def test_calibrate_one_vector_by_hand():
    # W·p = [0.7 / 0.8, 0.3 / 0.2] = [0.875, 1.5]; normalised: [0.875, 1.5] / 2.375
    out = calibrate([0.7, 0.3], [0.8, 0.2])
    torch.testing.assert_close(out, torch.tensor([0.875 / 2.375, 1.5 / 2.375], dtype=torch.float64))
    assert int(out.argmax()) == 1  # the label the prompt leaned against wins once the lean is divided out


def test_calibrate_rows_as_a_matrix_product():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]])
    p_cf = torch.tensor([0.6, 0.3, 0.1])
    w = torch.diag(1 / p_cf)
    expected = torch.stack([w @ p / (w @ p).sum() for p in probs]).double()
    out = calibrate(probs, p_cf)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(-1), torch.ones(3, dtype=torch.float64))
    # the content-free distribution itself calibrates to uniform; a uniform p_cf changes nothing
    torch.testing.assert_close(calibrate(p_cf, p_cf), torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(calibrate(probs, torch.full((3,), 1 / 3)), probs.double())


def test_p_cf_averages_the_softmax_of_each_content_free_input():
    scores = torch.tensor([[-1.0, -2.0], [-3.0, -0.5], [-0.2, -0.2]])  # log-probs, one row per input
    each = [torch.tensor([a, b]).exp() / torch.tensor([a, b]).exp().sum() for a, b in scores.tolist()]
    p_cf = label_probs(scores).mean(0)
    torch.testing.assert_close(p_cf, torch.stack(each).mean(0).double())
    assert float(p_cf.sum()) == pytest.approx(1.0)


def test_calibrate_errors():
    with pytest.raises(ShapeError, match="one probability per label"):
        calibrate([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ShapeError, match="has an entry <= 0"):
        calibrate([0.5, 0.5], [1.0, 0.0])


def test_content_free_inputs_include_the_mask_token_only_when_there_is_one():
    assert content_free_inputs(h.tokenizer("gpt2")) == ["N/A", ""]
    assert content_free_inputs(h.tokenizer("roberta")) == ["N/A", "", "<mask>"]


def test_label_distribution():
    assert label_distribution([1, 1, 0, 1], ["neg", "pos", "neutral"]) == {
        "neg": 0.25,
        "pos": 0.75,
        "neutral": 0.0,
    }
