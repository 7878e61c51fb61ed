"""The reward model's pairwise loss (InstructGPT eq. 1, Llama 2's margin, trl's reward centering).

Per pair of scalar rewards r_c (chosen) and r_r (rejected):

    loss = -log σ(r_c - r_r - margin) + center_coef · (r_c + r_r)²

whose mean over pairs is trl 1.16 RewardTrainer.compute_loss with `center_rewards_coefficient`
(trl/trainer/reward_trainer.py: `loss += coef * torch.mean((rewards_chosen + rewards_rejected) ** 2)`;
Eisenstein et al. 2023: the centering term keeps the rewards near zero mean). A K-way ranking
(InstructGPT) trains on all its C(K, 2) pairs: `ranking_pairs`.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from plmkit.align.checks import same_shape
from plmkit.errors import ConfigError


def reward_pair_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss (B,) of the chosen and rejected rewards (B,); `margin` (B,) is how much better the
    chosen one must score (Llama 2: larger for clearer preferences). The caller sums or averages it."""
    same_shape("reward_pair_loss", chosen=chosen, rejected=rejected)
    difference = chosen - rejected  # (B,)
    if margin is not None:
        same_shape("reward_pair_loss", chosen=chosen, margin=margin)
        difference = difference - margin
    losses = -F.logsigmoid(difference)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected) ** 2
    return losses


def ranking_pairs(k: int) -> list[tuple[int, int]]:
    """All C(k, 2) (better, worse) index pairs of k responses ranked best first (InstructGPT's K-way
    comparisons: every pair of one prompt trains together, so the prompt is seen once)."""
    if k < 2:
        raise ConfigError(f"ranking_pairs: a ranking needs at least 2 responses, got k={k}")
    return list(itertools.combinations(range(k), 2))


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The fraction of pairs whose chosen reward is strictly higher (a tie counts as wrong), a 0-dim tensor."""
    same_shape("pair_accuracy", chosen=chosen, rejected=rejected)
    return (chosen > rejected).float().mean()
