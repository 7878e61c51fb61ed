"""PPO for language models (Ziegler et al. 2019, InstructGPT): rewards per token, GAE, clipped losses.

The response tokens of a batch are the time steps: `mask` (B, T) is 1 on each response's tokens (right
padded: its tokens, then padding). The reward of a response is the reward model's score at its last
token, minus kl_coef · KL(π || π_ref) at every token (`token_rewards`). GAE turns rewards and the value
head's estimates into advantages and returns (`gae`); the policy and value losses clip the update
(`policy_loss`, `value_loss`). The losses return (loss_sum, count) over the masked tokens: the engine
divides the step's sum by its count, so micro-batches and ranks add up exactly to the token mean.

Entropy is the caller's (it needs the logits); the PTX term (InstructGPT's γ · pre-training NLL) is the
causal LM's token_loss, added by the recipe.
"""

from __future__ import annotations

import torch

from plmkit.align.checks import same_shape
from plmkit.align.kl import masked_mean


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float | torch.Tensor
) -> torch.Tensor:
    """Per-token rewards (B, T): -kl_coef · kl on the response tokens, plus the score (B,) at each
    response's last token; 0 on padding. A response without tokens has nowhere to put its score: its row
    stays 0 (it has no token to train either)."""
    same_shape("token_rewards", kl=kl, mask=mask)
    mask = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) index of the last response token, -1 if none
    at_last = positions == last[:, None]  # (B, T); all False for an empty response
    rewards = -kl_coef * kl * mask
    return rewards + at_last * scores[:, None].to(rewards.dtype)


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over right-padded responses: (advantages,
    returns), both (B, T), 0 on padding. δ_t = r_t + γ V_{t+1} - V_t with V = 0 after the last response
    token (the episode ends there), A_t = δ_t + γλ A_{t+1}, returns = A + V. Padding contributes nothing
    whatever rewards / values hold there. No gradient flows: these are targets. Whitening the advantages
    (trl, InstructGPT) is the caller's: `masked_whiten(advantages, mask)`."""
    same_shape("gae", rewards=rewards, values=values, mask=mask)
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # (B, T)
    steps = values.shape[1]
    advantage = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    advantages = [advantage] * steps
    for t in reversed(range(steps)):
        if t + 1 < steps:  # next_mask 0: the episode ended at t, nothing follows
            next_mask, next_value = mask[:, t + 1], values[:, t + 1]
        else:
            next_mask = next_value = torch.zeros_like(advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_mask * advantage
        advantages[t] = advantage
    advantages_bt = torch.stack(advantages, dim=1) * mask  # (B, T)
    return advantages_bt, (advantages_bt + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) per token, summed over the masked tokens:
    (loss_sum, count, stats). With ratio = exp(logp - logp_old): max(-A·ratio, -A·clip(ratio, 1 ± ε)).
    stats: clipfrac (the tokens where the clipped term is the larger), approx_kl (k3 of π_old vs π:
    the mean of exp(logr) - logr - 1 with logr = logp_old - logp). All inputs (B, T)."""
    same_shape("policy_loss", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    with torch.no_grad():
        log_ratio = old_logprobs - logprobs
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(mask.dtype), mask).item(),
            "approx_kl": masked_mean(torch.exp(log_ratio) - log_ratio - 1, mask).item(),
        }
    return (per_token * mask).sum(), mask.sum().long(), stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The value head's loss per token, summed over the masked tokens: (loss_sum, count, stats).
    0.5 · max((V - R)², (V_clip - R)²) with V_clip = V_old + clip(V - V_old, ±ε) (the clipped value
    loss of OpenAI's baselines and trl); clip_eps=None: 0.5 · (V - R)². stats: clipfrac (the tokens
    where the clipped error is the larger). All inputs (B, T)."""
    same_shape("value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    mask = mask.to(values.dtype)
    unclipped = (values - returns) ** 2  # (B, T)
    if clip_eps is None:
        per_token, clipfrac = unclipped, 0.0
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped = (clipped_values - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(mask.dtype).detach(), mask).item()
    return 0.5 * (per_token * mask).sum(), mask.sum().long(), {"clipfrac": clipfrac}
