"""Direct preference optimization: the loss of a policy against a frozen reference on preference pairs.

With the implicit rewards β·(log π(y|x) - log π_ref(y|x)) and h = (π_c - ref_c) - (π_r - ref_r), the
difference of the chosen and rejected log-ratios, per pair (trl 1.16 DPOTrainer._compute_loss):

    sigmoid  -(1 - ε) log σ(β h) - ε log σ(-β h)   (Rafailov et al. 2023; ε > 0: conservative DPO, cDPO)
    hinge    relu(1 - β h)                         (SLiC, Zhao et al. 2023)
    ipo      (h - 1 / (2β))²                       (Azar et al. 2023, eq. 17; β is their τ)

trl 1.16's "sigmoid" has no label smoothing (its `label_smoothing` feeds robust / EXO / AOT), so ε = 0
is trl's sigmoid exactly; ε > 0 is the cDPO form of torchtune's DPOLoss and earlier trl releases.
IPO: trl divides each log-ratio by its completion's token count; pass per-token-averaged log-probs
(sum / tokens, for the policy and the reference) here for the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plmkit.align.checks import choice, same_shape
from plmkit.align.reward import pair_accuracy
from plmkit.errors import ConfigError

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


@dataclass
class DpoLoss:
    """Per-pair losses and the implicit rewards β·(log π - log π_ref) (detached), all (B,)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DpoLoss:
    """The DPO loss per pair from per-sequence log-probs (B,) of the chosen and rejected responses under
    the policy and the reference; see the module docstring for the loss types."""
    choice("dpo_loss", "loss_type", loss_type, DPO_LOSS_TYPES)
    if not beta > 0:
        raise ConfigError(f"dpo_loss: beta={beta} must be > 0 (the strength of the pull to the reference)")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"dpo_loss: label_smoothing={label_smoothing} must lie in [0, 0.5) (the probability that a "
            "preference label is flipped)"
        )
    if label_smoothing and loss_type != "sigmoid":
        raise ConfigError(f"dpo_loss: label_smoothing applies to loss_type sigmoid only, not {loss_type}")
    same_shape(
        "dpo_loss",
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        reference_chosen=reference_chosen,
        reference_rejected=reference_rejected,
    )
    chosen_logratios = policy_chosen - reference_chosen  # (B,)
    rejected_logratios = policy_rejected - reference_rejected  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # ipo
        losses = (h - 1 / (2 * beta)) ** 2
    return DpoLoss(
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
    )


def dpo_metrics(out: DpoLoss) -> dict[str, float]:
    """trl's DPO logs over a batch: mean chosen / rejected implicit rewards, the fraction of pairs whose
    chosen reward is higher, and the mean margin."""
    chosen, rejected = out.chosen_rewards.float(), out.rejected_rewards.float()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": pair_accuracy(chosen, rejected).item(),
        "rewards/margins": (chosen - rejected).mean().item(),
    }
