"""The losses every training method is built from, each returning what exact accumulation needs.

    token_loss(logits, labels)          -> (sum, count)  cross entropy summed over labels != -100
    sequence_logprobs(logits, labels)   -> (sum, count)  per sequence: the label tokens' log-probs (DPO, PPO)
    pairwise_ranking_loss(chosen, rej.) -> mean          -log σ(r_chosen - r_rejected) (reward models)

A sum and its count (not a mean) add up exactly over micro-batches and ranks: the training loop divides
the step's summed loss by the step's total count once. The models' `.loss` (a mean, for users) is
token_loss's sum / count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # a label that carries no loss


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """Causal LMs: position t predicts token t+1, so label t moves to t-1 (the last position gets none).
    Shifting the labels, not the (big) logits, keeps the logits uncopied."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross entropy summed over the positions whose label is not -100, their number), in fp32.
    logits (B, T, V), labels (B, T); `shift`: causal LM labels (see `shifted`)."""
    if shift:
        labels = shifted(labels)
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total, (labels != IGNORE).sum()


def mean_token_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool = False) -> torch.Tensor:
    """The models' `.loss`: token_loss's sum over its count (nan when no position has a label)."""
    total, count = token_loss(logits, labels, shift)
    return total / count


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (the sum of the label tokens' log-probabilities (B,), how many label tokens (B,)),
    in fp32; positions labelled -100 count nothing. logits (B, T, V), labels (B, T)."""
    if shift:
        labels = shifted(labels)
    mask = labels != IGNORE  # (B, T)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * mask).sum(dim=-1), mask.sum(dim=-1)


def pairwise_ranking_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected), averaged over pairs (InstructGPT eq. 1)."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()
