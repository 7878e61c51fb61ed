"""KL estimators, masked statistics, KL controllers, per-token rewards, GAE and the clipped PPO losses,
each against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.align import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from plmkit.errors import ConfigError, ShapeError

LOGP = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-1.5, -1.0, -0.5]])


def test_kl_estimators_by_hand():
    pairs = [(-1.0, -1.5), (-2.0, -1.0), (-0.5, -0.5)]
    logr = [ref - logp for logp, ref in pairs]
    assert kl_penalty(LOGP, REF, "k1")[0].tolist() == pytest.approx([-x for x in logr])
    assert kl_penalty(LOGP, REF, "k2")[0].tolist() == pytest.approx([x * x / 2 for x in logr])
    assert kl_penalty(LOGP, REF, "k3")[0].tolist() == pytest.approx([math.exp(x) - x - 1 for x in logr])
    assert kl_penalty(LOGP, REF, "abs")[0].tolist() == pytest.approx([abs(x) for x in logr])
    with pytest.raises(ConfigError, match='did you mean "k3"'):
        kl_penalty(LOGP, REF, "k4")


def test_k1_and_k3_estimate_the_true_kl():
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    true_kl = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True)[None]  # (1, S) drawn from π = p
    logp, ref = p.log()[samples], q.log()[samples]
    assert kl_penalty(logp, ref, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_penalty(logp, ref, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


def test_masked_mean_var_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 6.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    kept = [1.0, 2.0, 3.0, 6.0]
    mean = sum(kept) / 4
    var = sum((v - mean) ** 2 for v in kept) / 3  # unbiased
    assert masked_mean(x, mask).item() == pytest.approx(mean)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.5])
    assert masked_var(x, mask).item() == pytest.approx(var)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(var * 3 / 4)
    whitened = masked_whiten(x, mask)
    expected = [(v - mean) / math.sqrt(var + 1e-8) for v in kept]
    assert whitened[mask.bool()].tolist() == pytest.approx(expected, rel=1e-5)
    kept_whitened = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept_whitened.tolist() == pytest.approx([e + mean for e in expected], rel=1e-5)


def test_masked_mean_of_nothing_is_zero():
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0
    assert masked_mean(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=1).tolist() == [1.0, 0.0]


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    controller.update(current_kl=9.0, n_steps=256)  # error 0.5, clipped to 0.2
    expected = 0.2 * (1 + 0.2 * 256 / 10_000)
    assert controller.value == pytest.approx(expected)
    controller.update(current_kl=5.4, n_steps=512)  # error -0.1, unclipped
    expected *= 1 - 0.1 * 512 / 10_000
    assert controller.value == pytest.approx(expected)
    resumed = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value


def test_fixed_kl_controller_never_moves():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=64)
    assert controller.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(controller.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_rejects_bad_settings():
    with pytest.raises(ConfigError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)
    with pytest.raises(ConfigError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)


def test_token_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    scores, coef = torch.tensor([2.0, -1.0, 5.0]), 0.1
    expected = [
        [-0.01, -0.02, -0.03, -0.04 + 2.0],
        [-0.05, 0.05 - 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # no response token: no place for the score
    ]
    got = token_rewards(scores, kl, mask, coef)
    assert got.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


GAMMA, LAM = 0.9, 0.95


def test_gae_issue_fixture_values_equal_rewards():
    """values = rewards = [0, 0, 0, 1]: returns [γ³λ², γ²λ, γ, 1] (the issue's fixture)."""
    v = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    advantages, returns = gae(v, v, torch.ones(1, 4), GAMMA, LAM)
    g, lam = GAMMA, LAM
    assert returns[0].tolist() == pytest.approx([g**3 * lam**2, g**2 * lam, g, 1.0])
    assert advantages[0].tolist() == pytest.approx([g**3 * lam**2, g**2 * lam, g, 0.0])


def test_gae_zero_values():
    """The other reading of the fixture, rewards [0, 0, 0, 1] and values 0: A_t = R_t = (γλ)^(3-t)."""
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    advantages, returns = gae(rewards, torch.zeros(1, 4), torch.ones(1, 4), GAMMA, LAM)
    expected = [(GAMMA * LAM) ** (3 - t) for t in range(4)]
    assert advantages[0].tolist() == pytest.approx(expected)
    assert returns[0].tolist() == pytest.approx(expected)


def test_gae_general_by_hand():
    rewards, values = [0.5, -0.2, 1.0], [0.3, 0.1, -0.4]
    advantages, running = [0.0] * 3, 0.0
    for t in reversed(range(3)):
        next_value = values[t + 1] if t < 2 else 0.0
        running = rewards[t] + GAMMA * next_value - values[t] + GAMMA * LAM * running
        advantages[t] = running
    got_a, got_r = gae(torch.tensor([rewards]), torch.tensor([values]), torch.ones(1, 3), GAMMA, LAM)
    assert got_a[0].tolist() == pytest.approx(advantages)
    assert got_r[0].tolist() == pytest.approx([a + v for a, v in zip(advantages, values)])


def test_gae_padding_changes_nothing():
    rewards, values = torch.tensor([[0.5, -0.2, 1.0]]), torch.tensor([[0.3, 0.1, -0.4]])
    alone = gae(rewards, values, torch.ones(1, 3), GAMMA, LAM)
    padded_rewards = torch.tensor([[0.5, -0.2, 1.0, 7.0, -3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    padded_values = torch.tensor([[0.3, 0.1, -0.4, 11.0, 13.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    advantages, returns = gae(padded_rewards, padded_values, mask, GAMMA, LAM)
    assert torch.allclose(advantages[0, :3], alone[0][0]) and torch.allclose(returns[0, :3], alone[1][0])
    assert advantages[0, 3:].tolist() == [0.0, 0.0] and returns[0, 3:].tolist() == [0.0, 0.0]


def test_policy_loss_by_hand():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -0.5, -1.05, -1.0]])
    advantages = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    eps = 0.2
    expected, clipped_tokens, kl = 0.0, 0, 0.0
    for lp, o, a in [(-1.0, -1.5, 1.0), (-1.0, -0.5, -1.0), (-1.0, -1.05, 2.0)]:
        ratio = math.exp(lp - o)
        unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
        expected += max(unclipped, clipped)
        clipped_tokens += clipped > unclipped
        kl += math.exp(o - lp) - (o - lp) - 1
    loss_sum, count, stats = policy_loss(logprobs, old, advantages, mask, clip_eps=eps)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6) and int(count) == 3
    assert stats["clipfrac"] == pytest.approx(clipped_tokens / 3)
    assert stats["approx_kl"] == pytest.approx(kl / 3, rel=1e-5)
    loss_sum.backward()
    # token 0: ratio e^0.5 > 1.2 with A > 0 -> clipped, no gradient; token 3 is masked
    assert logprobs.grad[0, 0].item() == 0.0 and logprobs.grad[0, 3].item() == 0.0
    assert logprobs.grad[0, 2].item() == pytest.approx(-2.0 * math.exp(0.05), rel=1e-6)


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.1, 2.0]])
    returns = torch.tensor([[0.0, 1.0, 10.0]])
    mask = torch.ones(1, 3)
    eps = 0.2
    expected, clipped_tokens = 0.0, 0
    for v, o, r in [(1.0, 0.5, 0.0), (0.0, 0.1, 1.0), (2.0, 2.0, 10.0)]:
        v_clip = o + min(max(v - o, -eps), eps)
        expected += 0.5 * max((v - r) ** 2, (v_clip - r) ** 2)
        clipped_tokens += (v_clip - r) ** 2 > (v - r) ** 2
    loss_sum, count, stats = value_loss(values, old, returns, mask, clip_eps=eps)
    assert loss_sum.item() == pytest.approx(expected) and int(count) == 3
    assert stats["clipfrac"] == pytest.approx(clipped_tokens / 3)
    unclipped_sum, _, _ = value_loss(values, old, returns, mask, clip_eps=None)
    assert unclipped_sum.item() == pytest.approx(0.5 * (1.0 + 1.0 + 64.0))


def test_ppo_losses_add_up_over_micro_batches():
    torch.manual_seed(0)
    logprobs, old = -torch.rand(4, 6), -torch.rand(4, 6)
    advantages, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).long()
    full_sum, full_count, _ = policy_loss(logprobs, old, advantages, mask)
    parts = [
        policy_loss(logprobs[i : i + 2], old[i : i + 2], advantages[i : i + 2], mask[i : i + 2])
        for i in (0, 2)
    ]
    assert sum(p[0] for p in parts).item() == pytest.approx(full_sum.item(), rel=1e-6)
    assert sum(int(p[1]) for p in parts) == int(full_count)


def test_ptx_gradient_adds_up():
    """InstructGPT's PPO-ptx: grad(ppo + γ·nll) = grad(ppo) + γ·grad(nll), the recipe's accumulation."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)
    x, old, advantages = torch.randn(3, 4), -torch.rand(3, 1) - 1, torch.randn(3, 1)
    targets, mask, gamma = torch.tensor([1, 3, 0]), torch.ones(3, 1), 0.7

    def losses():
        logits = model(x)  # (3, 5)
        logprobs = torch.log_softmax(logits, -1).gather(1, targets[:, None])  # (3, 1)
        ppo = policy_loss(logprobs, old, advantages, mask)[0]
        nll = torch.nn.functional.cross_entropy(model(x + 1), targets, reduction="sum")  # pre-training batch
        return ppo, nll

    params = list(model.parameters())
    ppo, nll = losses()
    combined = torch.autograd.grad(ppo + gamma * nll, params)
    ppo, nll = losses()
    separate_ppo = torch.autograd.grad(ppo, params)
    ppo, nll = losses()
    separate_nll = torch.autograd.grad(nll, params)
    for c, p, n in zip(combined, separate_ppo, separate_nll):
        assert torch.allclose(c, p + gamma * n, atol=1e-6)


def test_ppo_shape_errors():
    with pytest.raises(ShapeError, match="mask has shape"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ShapeError, match="values has shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
