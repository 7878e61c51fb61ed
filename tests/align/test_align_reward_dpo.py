"""Reward-model pair loss and DPO: hand-computed values (formulas written out with math, not the code)."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.align import dpo_loss, dpo_metrics, pair_accuracy, ranking_pairs, reward_pair_loss
from plmkit.errors import ConfigError, ShapeError


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_reward_pair_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.0])
    expected = [-log_sigmoid(c - r) for c, r in [(1.0, 0.0), (-0.5, 0.5), (2.0, 2.0)]]
    assert reward_pair_loss(chosen, rejected).tolist() == pytest.approx(expected, rel=1e-6)


def test_reward_pair_loss_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    margin, coef = torch.tensor([0.5, 2.0]), 0.01
    expected = [
        -log_sigmoid(c - r - m) + coef * (c + r) ** 2 for c, r, m in [(1.0, 0.0, 0.5), (-0.5, 0.5, 2.0)]
    ]
    got = reward_pair_loss(chosen, rejected, margin=margin, center_coef=coef)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_reward_pair_loss_gradient_pushes_chosen_up():
    chosen, rejected = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    reward_pair_loss(chosen, rejected).sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_c, lowers r_r


def test_ranking_pairs_are_all_better_worse_pairs():
    assert ranking_pairs(2) == [(0, 1)]
    pairs = ranking_pairs(4)
    assert len(pairs) == math.comb(4, 2) == 6
    assert all(better < worse for better, worse in pairs) and len(set(pairs)) == 6
    with pytest.raises(ConfigError, match="at least 2"):
        ranking_pairs(1)


def test_pair_accuracy_counts_ties_as_wrong():
    assert pair_accuracy(torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 3.0, 1.0])).item() == 0.5


def test_shape_mismatch_is_a_shape_error():
    with pytest.raises(ShapeError, match="rejected has shape"):
        reward_pair_loss(torch.zeros(3), torch.zeros(2))


# torchtune's DPO fixture (tests/torchtune/rlhf/loss/test_dpo_loss.py)
POLICY_CHOSEN = [-0.5, -10.0, -1.0]
POLICY_REJECTED = [-0.1, -30.0, -21.0]
REFERENCE_CHOSEN = [-0.5, -10.1, -0.1]
REFERENCE_REJECTED = [-0.1, -20.1, -0.1]
BETA = 0.1


def fixture_dpo(**options):
    tensors = [
        torch.tensor(v) for v in (POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED)
    ]
    return dpo_loss(*tensors, **{"beta": BETA, **options})


def h_values() -> list[float]:
    """(π_c - ref_c) - (π_r - ref_r) per pair: 0, 10, 20."""
    return [
        (pc - rc) - (pr - rr)
        for pc, pr, rc, rr in zip(POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN, REFERENCE_REJECTED)
    ]


def test_dpo_sigmoid_by_hand():
    expected = [-log_sigmoid(BETA * h) for h in h_values()]
    out = fixture_dpo(loss_type="sigmoid")
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.losses[0].item() == pytest.approx(math.log(2))  # policy = reference on pair 0


def test_dpo_sigmoid_is_ln2_when_policy_is_reference():
    logps = torch.tensor([-3.0, -7.5])
    out = dpo_loss(logps, logps - 1, logps, logps - 1)
    assert out.losses.tolist() == pytest.approx([math.log(2)] * 2)


def test_dpo_label_smoothing_by_hand():
    eps = 0.1
    expected = [-(1 - eps) * log_sigmoid(BETA * h) - eps * log_sigmoid(-BETA * h) for h in h_values()]
    assert fixture_dpo(label_smoothing=eps).losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_dpo_hinge_by_hand():
    expected = [max(0.0, 1 - BETA * h) for h in h_values()]
    assert fixture_dpo(loss_type="hinge").losses.tolist() == pytest.approx(expected, abs=1e-5)


def test_dpo_ipo_by_hand():
    expected = [(h - 1 / (2 * BETA)) ** 2 for h in h_values()]
    assert fixture_dpo(loss_type="ipo").losses.tolist() == pytest.approx(expected, rel=1e-5)


def test_dpo_rewards_and_metrics():
    out = fixture_dpo()
    chosen = [BETA * (p - r) for p, r in zip(POLICY_CHOSEN, REFERENCE_CHOSEN)]
    rejected = [BETA * (p - r) for p, r in zip(POLICY_REJECTED, REFERENCE_REJECTED)]
    assert out.chosen_rewards.tolist() == pytest.approx(chosen, abs=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx(rejected, abs=1e-6)
    metrics = dpo_metrics(out)
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 3, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(sum(rejected) / 3, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(2 / 3)  # pair 0 is a tie
    assert metrics["rewards/margins"] == pytest.approx(sum(BETA * h for h in h_values()) / 3, abs=1e-6)


def test_dpo_rewards_carry_no_gradient_but_losses_do():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    out = dpo_loss(policy, torch.tensor([-2.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]))
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loss_type": "sigmoids"}, 'did you mean "sigmoid"'),
        ({"beta": 0.0}, "beta=0.0 must be > 0"),
        ({"label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "sigmoid only"),
    ],
)
def test_dpo_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        fixture_dpo(**options)
