"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): a k-shot prompt leans towards some
labels whatever the query (majority label, recency, common words). Its lean is measured with content-free
queries in the same prompt, and divided out.

    p_cf = mean over content-free inputs ("N/A", "", the mask token) of label_probs(scores)    # (L,)
    W = diag(p_cf)^-1, b = 0
    calibrate(p, p_cf) = W·p / sum(W·p)                                                         # (..., L)

The paper writes softmax(W·p + b); with b = 0 its argmax is that of W·p, and W·p / sum(W·p) is the
distribution whose ratios are those of W·p (the label-word distribution reweighted by 1 / p_cf, as a
prior correction), so that is what `calibrate` returns. No model here: the content-free probabilities
of a prompt are scored by plmkit.prompting.icl.content_free_probs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from plmkit.errors import ShapeError

CONTENT_FREE_TEXTS = ("N/A", "")  # and the tokenizer's mask token, when it has one


def content_free_inputs(tokenizer: Any) -> list[str]:
    """The content-free query texts: "N/A", "" and the mask token's string (e.g. "[MASK]", "<mask>");
    a tokenizer without a mask token (GPT-2, LLaMA) gives only the first two."""
    special = getattr(tokenizer, "special_tokens", None)
    mask = getattr(special, "mask", None) if special is not None else None
    return [*CONTENT_FREE_TEXTS, *([mask] if mask else [])]


def label_probs(scores: torch.Tensor) -> torch.Tensor:
    """(..., L) label-word log-probabilities -> the distribution over the L labels (softmax)."""
    return torch.as_tensor(scores, dtype=torch.float64).softmax(-1)


def calibrate(probs: torch.Tensor | Sequence, p_cf: torch.Tensor | Sequence) -> torch.Tensor:
    """(..., L) label probabilities calibrated by the content-free distribution `p_cf` (L,): each row is
    W·p with W = diag(p_cf)^-1 (b = 0), normalised to sum to one. float64."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    cf = torch.as_tensor(p_cf, dtype=torch.float64)
    if cf.dim() != 1 or p.shape[-1:] != cf.shape:
        raise ShapeError(
            f"calibrate: probabilities of shape {tuple(p.shape)} and p_cf of shape {tuple(cf.shape)}; "
            "p_cf is one probability per label, the last dimension of probs"
        )
    if not bool((cf > 0).all()):
        raise ShapeError(
            f"calibrate: p_cf {cf.tolist()} has an entry <= 0, so diag(p_cf) has no inverse; "
            "give content-free probabilities (a softmax is always > 0)"
        )
    weights = torch.diag(1.0 / cf)  # W (L, L); b = 0
    q = p @ weights.T  # (..., L): W·p for every row
    return q / q.sum(-1, keepdim=True)


def label_distribution(predictions: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """The fraction of predictions per label name (every label listed, 0.0 for one never predicted)."""
    counts = Counter(int(p) for p in predictions)
    total = max(len(predictions), 1)
    return {name: counts.get(i, 0) / total for i, name in enumerate(names)}
