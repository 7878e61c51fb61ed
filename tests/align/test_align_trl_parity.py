"""Parity with trl 1.16 on the same random tensors: trl's own loss code is called (the trainers' loss
methods, unbound, on a minimal stand-in for the trainer and a stand-in model that returns the given
log-probs / scores), not a copy of it.

    reward  RewardTrainer.compute_loss       trl/trainer/reward_trainer.py
    DPO     DPOTrainer._compute_loss          trl/trainer/dpo_trainer.py (precompute_ref_logps=True)
    GRPO    GRPOTrainer._compute_loss         trl/trainer/grpo_trainer.py (importance_sampling_level="token")

Importing trl's trainers takes ~10 s of CPU, hence slow.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from plmkit.align import dpo_loss, dpo_metrics, grpo_loss, reward_pair_loss

pytestmark = pytest.mark.slow


def trl_module(name: str):
    pytest.importorskip("trl")
    return pytest.importorskip(f"trl.trainer.{name}")


def accelerator(**extra) -> SimpleNamespace:
    """One process: gathers and reductions are the identity."""
    return SimpleNamespace(
        device=torch.device("cpu"),
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        num_processes=1,
        **extra,
    )


def stand_in_trainer(**attributes) -> SimpleNamespace:
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator(),
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
        aux_loss_enabled=False,
        **attributes,
    )


# ---- reward model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_loss_equals_trl(with_margin, center):
    reward_trainer = trl_module("reward_trainer")
    generator = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(5, generator=generator), torch.randn(5, generator=generator)
    margin = torch.rand(5, generator=generator) if with_margin else None
    scores = torch.cat([chosen, rejected])[:, None]  # (2B, 1): trl's batch is [chosen..., rejected...]

    def model(**inputs):
        return SimpleNamespace(logits=scores)

    inputs = {"input_ids": torch.zeros(10, 4, dtype=torch.long), "attention_mask": torch.ones(10, 4)}
    if with_margin:
        inputs["margin"] = margin
    trainer = stand_in_trainer(args=SimpleNamespace(center_rewards_coefficient=center))
    expected = reward_trainer.RewardTrainer.compute_loss(trainer, model, inputs)
    ours = reward_pair_loss(chosen, rejected, margin=margin, center_coef=center or 0.0).mean()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- DPO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_loss_equals_trl(loss_type):
    dpo_trainer = trl_module("dpo_trainer")
    pairs, length, beta = 6, 5, 0.3
    generator = torch.Generator().manual_seed(7)
    completion_mask = torch.ones(2 * pairs, length, dtype=torch.long)
    completion_mask[1, 3:] = 0  # uneven completion lengths (IPO divides by them)
    completion_mask[pairs + 2, 2:] = 0
    shifted_mask = completion_mask[:, 1:]
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 3 * shifted_mask  # (2B, T-1)
    reference = -torch.rand(2 * pairs, generator=generator) * 6  # (2B,) sequence log-probs

    def model(**inputs):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    inputs = {
        "input_ids": torch.zeros(2 * pairs, length, dtype=torch.long),
        "attention_mask": torch.ones(2 * pairs, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": reference[:pairs],
        "ref_rejected_logps": reference[pairs:],
    }
    trainer = stand_in_trainer(
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
    )
    expected = dpo_trainer.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)

    policy = per_token.sum(dim=1)  # (2B,) as trl sums the completion's token log-probs
    if loss_type == "ipo":  # trl divides each log-ratio by completion_mask.sum(dim=1): pass averages
        lengths = completion_mask.sum(dim=1).clamp(min=1)
        policy, reference = policy / lengths, reference / lengths
    out = dpo_loss(
        policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], beta=beta, loss_type=loss_type
    )
    assert out.losses.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    if loss_type != "ipo":  # trl's rewards are β·(summed log-ratios), whatever the loss type
        logged = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("rewards/")}
        assert dpo_metrics(out) == pytest.approx(logged, rel=1e-5)


# ---- GRPO -----------------------------------------------------------------------------------------
def grpo_stand_in(per_token_logps, loss_type, beta, accumulation_steps=1):
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accumulation_steps)
    return stand_in_trainer(
        args=args,
        _get_per_token_logps_and_entropies=lambda *a, **k: (
            per_token_logps,
            torch.zeros_like(per_token_logps),
            None,
        ),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=0.28,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=accumulation_steps,
        max_completion_length=8,
        _entropy_bonus_enabled=False,
    )


def grpo_tensors(seed=0, n=6, length=5):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    for row, kept in enumerate([5, 2, 4, 1, 3, 5][:n]):
        mask[row, kept:] = 0
    logprobs = -torch.rand(n, length, generator=generator) - 0.2
    old = logprobs + torch.rand(n, length, generator=generator) - 0.5  # some ratios clip, both sides
    ref = logprobs + 0.3 * torch.randn(n, length, generator=generator)
    advantages = torch.randn(n, generator=generator)
    return logprobs, old, ref, advantages, mask


def trl_grpo(rows, tensors, loss_type, beta, accumulation_steps=1, global_tokens=None):
    """trl's loss on the rows `rows` of the batch (one micro-batch)."""
    grpo_trainer = trl_module("grpo_trainer")
    logprobs, old, ref, advantages, mask = (t[rows] for t in tensors)
    n, length = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(n, 2, dtype=torch.long),
        "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.zeros(n, length, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(global_tokens if global_tokens is not None else int(mask.sum())),
    }
    trainer = grpo_stand_in(logprobs, loss_type, beta, accumulation_steps)
    loss = grpo_trainer.GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, trainer._metrics["train"]


def ours(rows_list, tensors, loss_type, beta):
    """Σ loss_sum / Σ count over the micro-batches in rows_list (the engine's division)."""
    logprobs, old, ref, advantages, mask = tensors
    sums, counts = 0.0, 0
    for rows in rows_list:
        loss_sum, count, stats = grpo_loss(
            logprobs[rows], old[rows], advantages[rows], mask[rows], ref_logprobs=ref[rows], beta=beta,
            epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=8,
        )  # fmt: skip
        sums, counts = sums + loss_sum.item(), counts + int(count)
    return sums / counts, stats


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_equals_trl(loss_type, beta):
    tensors = grpo_tensors()
    everything = slice(0, 6)
    expected, logged = trl_grpo(everything, tensors, loss_type, beta)
    value, stats = ours([everything], tensors, loss_type, beta)
    assert value == pytest.approx(expected.item(), rel=1e-5)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert stats[name] == pytest.approx(logged[name][-1], abs=1e-6)
    if beta:
        assert stats["kl"] == pytest.approx(logged["kl"][-1], rel=1e-5)
    assert logged["clip_ratio/low_mean"][-1] > 0 and logged["clip_ratio/high_mean"][-1] > 0  # it clips


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_accumulation_equals_trl_over_two_micro_batches(loss_type):
    """trl's step over two micro-batches of 3 completions (its losses added, as their gradients are) equals
    our (sum, count) over the same micro-batches, and our full batch: grpo and dr_grpo divide by the
    accumulation steps, dapo by the global token count (module docstring of plmkit.align.grpo)."""
    tensors = grpo_tensors(seed=1)
    halves = [slice(0, 3), slice(3, 6)]
    tokens = int(tensors[-1].sum())
    trl_step = sum(trl_grpo(h, tensors, loss_type, 0.04, 2, tokens)[0].item() for h in halves)
    assert ours(halves, tensors, loss_type, 0.04)[0] == pytest.approx(trl_step, rel=1e-5)
    assert ours([slice(0, 6)], tensors, loss_type, 0.04)[0] == pytest.approx(trl_step, rel=1e-5)


def test_grpo_bnpo_differs_from_trl_over_uneven_micro_batches():
    """trl's bnpo averages the micro-batches' token means (11 and 9 tokens here); ours is the step's
    token mean, the same over any split (and equal to trl's with one micro-batch, above)."""
    tensors = grpo_tensors(seed=1)
    halves = [slice(0, 3), slice(3, 6)]
    trl_step = sum(trl_grpo(h, tensors, "bnpo", 0.04, 2)[0].item() for h in halves)
    split, full = ours(halves, tensors, "bnpo", 0.04)[0], ours([slice(0, 6)], tensors, "bnpo", 0.04)[0]
    assert split == pytest.approx(full, rel=1e-6)
    assert abs(split - trl_step) > 1e-3
