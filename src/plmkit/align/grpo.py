"""GRPO (Shao et al. 2024, DeepSeekMath): PPO without a value model; each completion's advantage is its
reward relative to the other completions of the same prompt.

The N completions of a batch come in groups of `group_size` consecutive rows, one group per prompt.
The per-token objective is PPO's clipped ratio times the completion's advantage, plus β · k3 KL to the
reference (trl 1.16 GRPOTrainer._compute_loss, importance_sampling_level="token"):

    l_t = -min(ρ_t A, clip(ρ_t, 1 - ε_low, 1 + ε_high) A) + β (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

with ρ_t = exp(logp_t - logp_old_t). The loss types differ in how the tokens' l_t are averaged; each is
returned as (loss_sum, count) so that the engine's sum(loss_sum) / sum(count) over a step's
micro-batches and ranks is the value over the whole step's batch:

    loss_type  full-batch value                        (loss_sum, count)           trl 1.16
    grpo       mean over sequences of each one's       (Σ_i Σ_t l / |o_i|, N)      the same: trl averages
               token mean                                                          micro-batch means of equal
                                                                                   size
    bnpo       token mean over the batch               (Σ l, tokens)               per micro-batch token mean,
                                                                                   then averaged: differs when
                                                                                   micro-batches / ranks hold
                                                                                   different token counts
    dr_grpo    Σ l / (N · max_completion_length)       (Σ l / L_max, N)            the same
    dapo       Σ l / tokens of the global batch        (Σ l, tokens)               the same (num_items_in_batch)

On the engine bnpo and dapo are therefore one objective, the exact token mean of the step.
"""

from __future__ import annotations

import torch

from plmkit.align.checks import choice, same_shape
from plmkit.align.kl import kl_penalty, masked_mean
from plmkit.errors import ConfigError, ShapeError

ADVANTAGE_SCALES = ("group", "batch", "none")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
STD_EPS = 1e-4  # added to the std before dividing (trl): a group of equal rewards gets advantage 0, not nan


def _groups(where: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (N,) -> (N / group_size, group_size), or ShapeError."""
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ShapeError(
            f"{where}: rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}; "
            "pass one reward per completion (N,) with N a multiple of group_size"
        )
    return rewards.view(-1, group_size)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Advantages (N,): each reward minus its group's mean, divided by the group's std + 1e-4 ("group",
    GRPO), by the whole batch's std + 1e-4 ("batch", Liu et al. 2025's recommendation as trl's
    scale_rewards="batch"), or not divided ("none": Dr. GRPO). Stds are unbiased (n - 1), as trl's;
    a group of one has std 0."""
    choice("group_advantages", "scale", scale, ADVANTAGE_SCALES)
    grouped = _groups("group_advantages", rewards, group_size)  # (G, group_size)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # (N,)
    if scale == "none":
        return advantages
    if scale == "group":
        std = grouped.std(dim=1) if group_size > 1 else torch.zeros_like(grouped[:, 0])  # (G,)
        std = std.repeat_interleave(group_size)  # (N,)
    else:
        std = rewards.std() if rewards.numel() > 1 else torch.zeros_like(rewards[0])
    return advantages / (std + STD_EPS)


def frac_reward_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    """The fraction of groups whose rewards are all equal (std ≈ 0): they have no advantage to learn
    from (trl logs it as frac_reward_zero_std; under scale_rewards="batch" trl uses the batch std)."""
    grouped = _groups("frac_reward_zero_std", rewards, group_size)
    if group_size == 1:
        return 1.0
    std = grouped.std(dim=1)
    return torch.isclose(std, torch.zeros_like(std)).float().mean().item()


def grpo_count(mask: torch.Tensor, loss_type: str = "grpo") -> int:
    """grpo_loss's count for a batch's completion mask (N, T), known before any forward (the engine's
    `count(batch)`): sequences for grpo / dr_grpo, tokens for bnpo / dapo."""
    choice("grpo_count", "loss_type", loss_type, GRPO_LOSS_TYPES)
    return mask.shape[0] if loss_type in ("grpo", "dr_grpo") else int(mask.sum())


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The GRPO objective on the completions' token log-probs (N, T) under the policy, the policy that
    sampled them (`old_logprobs`; None: the policy itself, detached, as in trl's single-update case) and
    the reference (needed when beta > 0), the advantages (N,) and the completion mask (N, T): (loss_sum,
    count, stats); see the module docstring for the loss types. `delta`: also cap the unclipped ratio
    at delta (two-sided clipping, trl's `delta`). stats, means over the masked tokens: kl (beta > 0),
    clip_ratio/low_mean (ρ < 1 - ε_low where A < 0), clip_ratio/high_mean (ρ > 1 + ε_high where A > 0),
    clip_ratio/region_mean (either)."""
    choice("grpo_loss", "loss_type", loss_type, GRPO_LOSS_TYPES)
    old_logprobs = logprobs.detach() if old_logprobs is None else old_logprobs
    same_shape("grpo_loss", logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if advantages.shape != logprobs.shape[:1]:
        raise ShapeError(
            f"grpo_loss: advantages have shape {tuple(advantages.shape)}; pass one per completion "
            f"({logprobs.shape[0]},)"
        )
    if beta and ref_logprobs is None:
        raise ConfigError("grpo_loss: beta > 0 needs ref_logprobs (the reference's token log-probs)")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ConfigError("grpo_loss: loss_type dr_grpo needs max_completion_length (its fixed normalizer)")
    mask = mask.to(logprobs.dtype)
    advantages = advantages[:, None]  # (N, 1)
    ratio = torch.exp(logprobs - old_logprobs)  # (N, T)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    capped_ratio = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token = -torch.minimum(capped_ratio * advantages, clipped_ratio * advantages)  # (N, T)
    stats: dict[str, float] = {}
    if beta:
        same_shape("grpo_loss", logprobs=logprobs, ref_logprobs=ref_logprobs)
        kl = kl_penalty(logprobs, ref_logprobs, "k3")  # (N, T)
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), mask).item()
    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (advantages < 0)
        high = (ratio > 1 + epsilon_high) & (advantages > 0)
        stats["clip_ratio/low_mean"] = masked_mean(low.to(mask.dtype), mask).item()
        stats["clip_ratio/high_mean"] = masked_mean(high.to(mask.dtype), mask).item()
        stats["clip_ratio/region_mean"] = masked_mean((low | high).to(mask.dtype), mask).item()

    per_sequence = (per_token * mask).sum(dim=1)  # (N,)
    sequences = torch.tensor(logprobs.shape[0], device=logprobs.device)
    if loss_type == "grpo":
        return (per_sequence / mask.sum(dim=1).clamp(min=1)).sum(), sequences, stats
    if loss_type == "dr_grpo":
        return per_sequence.sum() / max_completion_length, sequences, stats
    return per_sequence.sum(), mask.sum().long(), stats  # bnpo, dapo: the token mean
