"""The one streaming evaluator: the summed loss and its count over batches, logits dropped as it goes, so
memory stays flat however many batches there are. Training's validation and `plm eval` both use it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Any]]


def model_token_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss summed over the batch's targets, their number) of a model given its labels: the LMs report
    both (plmkit.model.losses.token_loss); a model that reports only its mean (ELECTRA's two-part loss) is
    weighted by its label positions."""
    out = model(**batch)
    if getattr(out, "loss_sum", None) is not None:  # ElectraOutput has no such field
        return out.loss_sum, out.targets
    labels = batch["labels"]
    if getattr(model, "shift_labels", False):
        labels = labels[:, 1:]
    count = (labels != -100).sum()
    return (out.loss.float() * count if count else out.loss.detach().new_zeros(())), count


@torch.no_grad()
def stream_loss(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    loss_fn: LossFn = model_token_loss,
    device: torch.device | None = None,
    autocast: Callable[[], Any] | None = None,
) -> tuple[float, int]:
    """(summed loss, target count) over `batches` in eval mode (the model's mode is restored after).
    `autocast`: the context each forward runs in (training's precision)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        if device is not None:
            batch = {k: v.to(device) for k, v in batch.items()}
        with autocast() if autocast else contextlib.nullcontext():
            loss_sum, n = loss_fn(model, batch)
        total += float(loss_sum) if int(n) else 0.0  # no targets: nothing to add (and no nan)
        count += int(n)
    model.train(was_training)
    return total, count


def loss_metrics(total: float, count: int) -> dict[str, float]:
    """Mean loss per target and its perplexity (empty without targets)."""
    if count == 0:
        return {}
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}
