"""One optimizer step of any training job, spelled out: forward -> loss -> backward per micro-batch, then
clip -> step -> zero_grad -> schedule, for every trained model.

The loss is the job's: `loss_fn(models, batch) -> (loss_sum, count)`, the loss summed over the batch's
targets and their number. The step's gradient is the gradient of sum(loss_sum) / sum(count) over all
micro-batches and all data-parallel ranks, exactly:

- when `loss_fn` has `count(batch) -> int` (targets of a batch, known before any forward), the step's
  total is known up front, and each micro-batch's backward is weighted by data_parallel_size / total
  (the strategies average the gradients over the data-parallel ranks);
- without it, each backward is weighted by data_parallel_size / len(micro_batches) (the same on every
  rank) and the gradients are rescaled by that estimate / the true total, summed over the ranks, before
  clipping. DeepSpeed keeps its gradients inside the engine, so it needs `count`.

A non-finite loss on any rank skips the step on every rank (nan is returned; the caller counts them).

With pipeline stages (`strategy.pipelined`) the strategy's schedule runs the micro-batches' forwards and
backwards instead of the loop below (plmkit.train.distributed.pipeline: the last stage replays its output
to `loss_fn`, weighted as here); it needs `count`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.train.precision import Precision

if TYPE_CHECKING:
    from plmkit.train.distributed.base import Strategy

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Mapping[str, nn.Module], Batch], tuple[torch.Tensor, Any]]


def train_step(
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
    loss_fn: LossFn,
    micro_batches: Sequence[Batch],
    strategy: Strategy,
    precision: Precision,
    max_norm: float | None = None,
) -> float:
    """One optimizer step of every model that has an optimizer; returns the step's loss per target (nan
    if the step was skipped). `micro_batches` are global: every rank holds all of them and trains on its
    rows (`strategy.local_rows`)."""
    trained = [name for name in models if name in optimizers]
    counter = getattr(loss_fn, "count", None)
    if counter is None and (strategy.pipelined or not strategy.exposes_gradients):
        what = "pipeline parallelism" if strategy.pipelined else f"distributed.strategy={strategy.name}"
        raise ConfigError(
            f"{what} needs a loss with count(batch) (the step's targets before the first backward); "
            "use strategy ddp or fsdp without pipeline stages for this loss"
        )
    if counter is not None:  # the exact weights up front
        counts = [int(counter(batch)) for batch in micro_batches]
        total = sum(counts)
        active = [i for i, n in enumerate(counts) if n > 0]  # no targets on any rank: nothing to learn
        weight = strategy.data_parallel_size / max(total, 1)
    else:  # an estimate, the same on every rank; corrected below
        total, active = 0, list(range(len(micro_batches)))
        weight = strategy.data_parallel_size / len(micro_batches)
    finite = counter is None or total > 0  # a step without any target: skip it
    loss_sum, targets = 0.0, 0
    if strategy.pipelined:  # the pipeline's schedule runs every micro-batch, stage by stage
        batches = [_on_device(strategy, batch) for batch in micro_batches]
        if finite:
            loss_sum, finite = strategy.pipeline_step(models, trained, loss_fn, batches, weight, precision)
        active = []  # its forwards and backwards are done
    for i in active if finite else []:
        batch = _on_device(strategy, micro_batches[i])
        last = i == active[-1]
        with contextlib.ExitStack() as sync:  # gradients are synchronised on the last micro-batch
            for name in trained:
                sync.enter_context(strategy.accumulating(models[name], last))
            with precision.autocast():
                summed, count = loss_fn(models, batch)
            count = int(count)
            finite = finite and (count == 0 or bool(torch.isfinite(summed)))
            if not strategy.backward(summed * weight, precision.scaler, finite):
                break  # the step is lost on every rank: skip its remaining micro-batches
        loss_sum += float(summed.detach()) if count else 0.0
        targets += count
    # summed over the ranks: the ranks of a tensor-parallel group hold the same rows, so divide by T
    # (pipeline stages other than the last hold no loss: they add 0)
    tp = strategy.tensor_parallel
    loss_sum, finite = strategy.agree(loss_sum / tp, finite)
    if counter is None:
        (total,) = strategy.sum_over_ranks(targets / tp)
        finite = finite and total > 0
    if finite:
        for name in trained:
            optimizer = optimizers[name]
            precision.scaler.unscale_(optimizer)  # fp16: true gradients before the clip
            if counter is None:
                strategy.scale_gradients(models[name], len(micro_batches) / total)
            if max_norm:
                strategy.clip_grad_norm(models[name], max_norm)
        for name in trained:
            strategy.step(optimizers[name], precision.scaler)
            mark_updated(optimizers[name])
        precision.scaler.update()
    for name in trained:
        strategy.zero_grad(optimizers[name], stepped=finite)  # a skipped step drops its gradients
    for scheduler in schedulers.values():
        scheduler.step()
    return loss_sum / total if finite else math.nan


def _on_device(strategy: Strategy, batch: Batch) -> Batch:
    """This rank's rows of a global micro-batch, on its device."""
    return {k: v.to(strategy.device, non_blocking=True) for k, v in strategy.local_rows(batch).items()}


def mark_updated(optimizer: torch.optim.Optimizer) -> None:
    """Bump the version counter of every parameter the optimizer updates. Fused optimizers (AdamW
    fused=True, the default where the device has it) write the parameters in place without bumping it,
    and plmkit.generation's decode-time weights are stamped with it: without this, a model that samples
    between steps (RL rollouts, PPO / GRPO) would decode with the weights of an earlier step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if isinstance(p, torch.Tensor):
                torch.autograd.graph.increment_version(p)
