"""KL between the policy and the reference per token, masked statistics, and the KL coefficient's controllers.

Estimators of KL(π || π_ref) from a sample of π (Schulman, "Approximating KL divergence", 2020), with
logr = logp_ref - logp per sampled token:

    k1  = -logr = logp - logp_ref          unbiased, can be negative (PPO's reward penalty, InstructGPT)
    k2  = logr² / 2                        biased, always >= 0
    k3  = exp(logr) - logr - 1             unbiased, always >= 0 (GRPO's KL term)
    abs = |logp - logp_ref|

Masked mean / variance / whitening use only the positions where the mask is 1; the variance is unbiased
(Bessel's correction n / (n - 1)), as trl's `masked_var(unbiased=True)` and OpenRLHF's whitening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from plmkit.align.checks import choice, same_shape
from plmkit.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate (B, T) of the sampled tokens' log-probs under the policy and the reference
    (both (B, T)); see the module docstring for the estimators."""
    choice("kl_penalty", "estimator", estimator, KL_ESTIMATORS)
    same_shape("kl_penalty", logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs - logprobs  # (B, T) logr
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    return log_ratio.abs()


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (all of them, or along `dim`); 0 where the mask
    has no position (an empty mean is 0, not nan, so one empty row cannot poison a batch statistic)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over the masked positions (a scalar); unbiased: times n / (n - 1), where n > 1."""
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    n = float(mask.sum())
    if unbiased and n > 1:
        variance = variance * (n / (n - 1))
    return variance


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with the masked mean and unbiased variance (trl's masked_whiten);
    shift_mean=False adds the mean back (rewards keep their sign, only their scale changes). Masked-out
    positions are whitened too: multiply by the mask where they must be 0."""
    mean, variance = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    return whitened if shift_mean else whitened + mean


@dataclass
class FixedKLController:
    """A constant KL coefficient (the `value` used in the per-token reward)."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing changes: the same call as the adaptive controller's."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019), eq. 2: β ← β · (1 + clip(KL / target - 1, -0.2, 0.2) · n_steps / horizon).

    The coefficient grows while the measured KL is above the target and shrinks while below, at most 20%
    of n_steps / horizon per update."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if not (init_kl_coef >= 0 and math.isfinite(init_kl_coef)):
            raise ConfigError(
                f"AdaptiveKLController: init_kl_coef={init_kl_coef} must be a finite number >= 0"
            )
        if not target > 0:
            raise ConfigError(f"AdaptiveKLController: target={target} must be > 0 (the KL the run aims at)")
        if not horizon > 0:
            raise ConfigError(
                f"AdaptiveKLController: horizon={horizon} must be > 0 (samples to reach the target)"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient after `n_steps` samples (the batch size) whose mean KL was `current_kl`."""
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The coefficient: what a resumed run needs (target and horizon come from its config)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
