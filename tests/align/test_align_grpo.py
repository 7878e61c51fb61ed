"""GRPO: group advantages, every loss aggregation on uneven lengths by hand, and exact accumulation of
(loss_sum, count) over micro-batches / simulated ranks."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from plmkit.align import frac_reward_zero_std, group_advantages, grpo_count, grpo_loss
from plmkit.errors import ConfigError, ShapeError

REWARDS = [1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]  # two groups of 4


def test_group_advantages_group_scale_by_hand():
    expected = []
    for group in (REWARDS[:4], REWARDS[4:]):
        mean, std = statistics.mean(group), statistics.stdev(group)  # stdev: unbiased
        expected += [(r - mean) / (std + 1e-4) for r in group]
    got = group_advantages(torch.tensor(REWARDS), group_size=4, scale="group")
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert got[4:].tolist() == [0.0] * 4  # equal rewards: no advantage


def test_group_advantages_batch_and_none_by_hand():
    std = statistics.stdev(REWARDS)
    centred = []
    for group in (REWARDS[:4], REWARDS[4:]):
        centred += [r - statistics.mean(group) for r in group]
    got_batch = group_advantages(torch.tensor(REWARDS), 4, scale="batch")
    assert got_batch.tolist() == pytest.approx([c / (std + 1e-4) for c in centred], abs=1e-6)
    assert group_advantages(torch.tensor(REWARDS), 4, scale="none").tolist() == pytest.approx(centred)


def test_group_advantages_errors():
    with pytest.raises(ShapeError, match="groups of 3"):
        group_advantages(torch.tensor(REWARDS), 3)
    with pytest.raises(ConfigError, match="scale='grop'"):
        group_advantages(torch.tensor(REWARDS), 4, scale="grop")


def test_frac_reward_zero_std():
    assert frac_reward_zero_std(torch.tensor(REWARDS), 4) == 0.5
    assert frac_reward_zero_std(torch.tensor(REWARDS), 2) == 0.75  # (1, 0) differs; the other three are equal


# three completions of uneven lengths 3, 1, 2 (padded to 4)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
LENGTHS = [3, 1, 2]


def per_token_by_hand(logprobs, old, advantages, ref, beta, eps_low, eps_high):
    """l_t for each real token, a list per completion (trl's formula written out with math)."""
    rows = []
    for i, length in enumerate(LENGTHS):
        row = []
        for t in range(length):
            ratio = math.exp(logprobs[i][t] - old[i][t])
            a = advantages[i]
            loss = -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
            if beta:
                logr = ref[i][t] - logprobs[i][t]
                loss += beta * (math.exp(logr) - logr - 1)
            row.append(loss)
        rows.append(row)
    return rows


def random_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(3, 4, generator=generator) - 0.5
    old = logprobs + 0.4 * (torch.rand(3, 4, generator=generator) - 0.5)  # ratios around 0.82-1.22
    ref = logprobs + 0.3 * torch.randn(3, 4, generator=generator)
    advantages = torch.tensor([1.0, -0.5, 2.0])
    return logprobs, old, ref, advantages


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_aggregations_by_hand(loss_type, beta):
    logprobs, old, ref, advantages = random_inputs()
    rows = per_token_by_hand(
        logprobs.tolist(), old.tolist(), advantages.tolist(), ref.tolist(), beta, 0.2, 0.28
    )
    tokens = sum(LENGTHS)
    expected = {
        "grpo": sum(sum(row) / len(row) for row in rows) / 3,
        "bnpo": sum(map(sum, rows)) / tokens,
        "dr_grpo": sum(map(sum, rows)) / (3 * 8),
        "dapo": sum(map(sum, rows)) / tokens,
    }[loss_type]
    loss_sum, count, stats = grpo_loss(
        logprobs,
        old,
        advantages,
        MASK,
        ref_logprobs=ref,
        beta=beta,
        epsilon_high=0.28,
        loss_type=loss_type,
        max_completion_length=8,
    )
    assert (loss_sum / count).item() == pytest.approx(expected, rel=1e-5)
    assert int(count) == grpo_count(MASK, loss_type) == (3 if loss_type in ("grpo", "dr_grpo") else tokens)
    assert ("kl" in stats) == bool(beta)


def test_grpo_clip_stats_by_hand():
    logprobs = torch.zeros(2, 3)
    old = torch.log(
        torch.tensor([[1 / 1.5, 1 / 0.5, 1.0], [1 / 1.5, 1 / 0.5, 1 / 1.5]])
    )  # ratios 1.5, 0.5, 1
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    _, _, stats = grpo_loss(logprobs, old, advantages, mask)
    # high: ratio > 1.2 with A > 0 -> row 0 token 0; low: ratio < 0.8 with A < 0 -> row 1 token 1
    assert stats["clip_ratio/high_mean"] == pytest.approx(1 / 5)
    assert stats["clip_ratio/low_mean"] == pytest.approx(1 / 5)
    assert stats["clip_ratio/region_mean"] == pytest.approx(2 / 5)


def test_grpo_on_policy_gradient_is_the_advantage_weighted_score():
    """old_logprobs=None (one update per generation): ratio 1, the gradient of l_t is -A per token."""
    logprobs = torch.zeros(2, 2, requires_grad=True)
    loss_sum, count, _ = grpo_loss(
        logprobs, None, torch.tensor([2.0, -1.0]), torch.ones(2, 2), loss_type="dapo"
    )
    (loss_sum / count).backward()
    assert logprobs.grad.tolist() == [[-0.5, -0.5], [0.25, 0.25]]


def test_grpo_delta_caps_the_unclipped_ratio():
    logprobs, old = torch.zeros(1, 1), torch.tensor([[-math.log(3.0)]])  # ratio 3, A < 0: unclipped side
    loss_sum, _, _ = grpo_loss(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 1), delta=2.0)
    assert loss_sum.item() == pytest.approx(2.0)
    uncapped, _, _ = grpo_loss(logprobs, old, torch.tensor([-1.0]), torch.ones(1, 1))
    assert uncapped.item() == pytest.approx(3.0)


def split_sum(loss_type, parts, **options):
    """Σ loss_sum / Σ count over row slices (micro-batches or ranks), as the engine divides."""
    logprobs, old, ref, advantages = random_inputs(1)
    sums, counts = 0.0, 0
    for rows in parts:
        loss_sum, count, _ = grpo_loss(
            logprobs[rows], old[rows], advantages[rows], MASK[rows], ref_logprobs=ref[rows], beta=0.04,
            loss_type=loss_type, max_completion_length=8, **options,
        )  # fmt: skip
        sums, counts = sums + loss_sum.item(), counts + int(count)
    return sums / counts


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_accumulates_exactly_over_two_simulated_ranks(loss_type):
    """Split the batch in two (ranks, or micro-batches) and add the (sum, count) pairs: the full-batch
    value, for every loss type (bnpo's token mean too, unlike trl's per-micro-batch mean)."""
    full = split_sum(loss_type, [slice(0, 3)])
    assert split_sum(loss_type, [slice(0, 1), slice(1, 3)]) == pytest.approx(full, rel=1e-6)
    assert split_sum(loss_type, [slice(0, 2), slice(2, 3)]) == pytest.approx(full, rel=1e-6)


def test_trl_bnpo_per_micro_batch_mean_differs_from_the_token_mean():
    """What the module docstring claims: trl's bnpo averages each micro-batch's token mean, which is not
    the batch's token mean when the micro-batches hold different token counts (3 + 1 vs 2 here)."""
    trl_style = (split_sum("bnpo", [slice(0, 2)]) + split_sum("bnpo", [slice(2, 3)])) / 2
    token_mean = split_sum("bnpo", [slice(0, 3)])
    assert abs(trl_style - token_mean) > 1e-3


def test_grpo_errors():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="needs ref_logprobs"):
        grpo_loss(logprobs, None, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ConfigError, match="max_completion_length"):
        grpo_loss(logprobs, None, torch.zeros(2), torch.ones(2, 3), loss_type="dr_grpo")
    with pytest.raises(ShapeError, match="one per completion"):
        grpo_loss(logprobs, None, torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ConfigError, match="did you mean"):
        grpo_loss(logprobs, None, torch.zeros(2), torch.ones(2, 3), loss_type="dapoo")
