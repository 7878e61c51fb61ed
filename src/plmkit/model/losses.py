"""The losses every training method is built from, each returning what exact accumulation needs.

    token_loss(logits, labels)          -> (sum, count)  cross entropy summed over labels != -100
    sequence_logprobs(logits, labels)   -> (sum, count)  per sequence: the label tokens' log-probs (DPO, PPO)
    pairwise_ranking_loss(chosen, rej.) -> mean          -log σ(r_chosen - r_rejected) (reward models)

A sum and its count (not a mean) add up exactly over micro-batches and ranks: the training loop divides
the step's summed loss by the step's total count once. The models' `.loss` (a mean, for users) is
token_loss's sum / count.
"""

from __future__ import annotations

import contextlib

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


# ---- the output layer and its cross entropy, in row chunks -------------------------------------
CHUNK_ELEMENTS = 1 << 23  # logits per chunk (rows x vocabulary): 32 MiB fp32; 1024 rows at V=8192 measured
# fastest (2^21-2^30 tried: smaller chunks starve the weight-gradient matmul, one chunk loses the cache)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(x_i Wᵀ + b, target_i) over rows of x, the logits made and dropped chunk by chunk.

    The gradients are computed in the forward, chunk by chunk (softmax - one-hot is known as soon as
    the chunk's logits are), so the backward only scales them: three matmuls as unchunked, none
    recomputed, and never more than one chunk of logits alive. Under autocast the matmuls run in the
    autocast dtype and the softmax in fp32, as `linear` + `token_loss` would."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, compute_dtype, chunk):
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        xc, wc = x.to(compute_dtype), weight.to(compute_dtype)
        bc = None if bias is None else bias.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if want_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=x.device) if want_b else None
        for start in range(0, x.shape[0], chunk):
            rows, target = xc[start : start + chunk], targets[start : start + chunk, None]
            logits = (rows @ wc.t() if bc is None else torch.addmm(bc, rows, wc.t())).float()
            logprobs = torch.log_softmax(logits, dim=-1)  # one fused pass (logsumexp is several)
            total -= logprobs.gather(1, target).sum()
            if not (want_x or want_w or want_b):
                continue
            dlogits = logprobs.exp_().scatter_add_(1, target, torch.full(target.shape, -1.0, device=x.device))
            if want_b:
                grad_b += dlogits.sum(0)
            dlogits = dlogits.to(compute_dtype)
            if want_x:
                grad_x[start : start + chunk] = dlogits @ wc
            if want_w:
                grad_w += dlogits.t() @ rows
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = grad_total.float()
        return (
            None if grad_x is None else grad_x * scale.to(grad_x.dtype),
            None if grad_w is None else (grad_w * scale).to(w_dtype),
            None if grad_b is None else (grad_b * scale).to(b_dtype),
            None,
            None,
            None,
        )


def linear_token_loss(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """The cross entropy of `F.linear(x, weight, bias)` against `targets`, summed over the rows (fp32),
    without the full logits: x (N, C) rows that all carry a target (N,), weight (V, C). Equal to
    F.cross_entropy(F.linear(x, weight, bias).float(), targets, reduction="sum"), gradients too."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    compute_dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    chunk = max(1, CHUNK_ELEMENTS // weight.shape[0])
    with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
        return _LinearCrossEntropy.apply(x, weight, bias, targets, compute_dtype, chunk)
