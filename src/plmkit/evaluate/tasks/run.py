"""Evaluate a task model on a split: batches of features in length order (little padding), the model's
outputs per feature, then the task's predictions per row and its metrics. `plm evaluate` and the
fine-tuning recipe's dev evaluations both come here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import TaskSplit
from plmkit.evaluate.tasks.base import Feature, Task


@dataclass
class TaskResult:
    metrics: dict[str, float]
    predictions: list[Any]  # one per row of the split
    records: list[dict[str, Any]]  # the lines of predictions.jsonl


@torch.no_grad()
def task_outputs(
    task: Task,
    model: nn.Module,
    features: Sequence[Feature],
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> list[Any]:
    """The task's outputs for every feature, in the features' order."""
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    outputs: list[Any] = [None] * len(features)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = task.collate([features[i] for i in chosen])
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                for i, out in zip(chosen, task.outputs(model, batch), strict=True):
                    outputs[i] = out
    finally:
        model.train(was_training)
    return outputs


def evaluate_split(
    task: Task,
    model: nn.Module,
    split: TaskSplit,
    features: Sequence[Feature] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> TaskResult:
    """Metrics and per-row predictions of `model` on `split` (features made here unless given)."""
    features = task.features(split) if features is None else features
    device = device if device is not None else next(model.parameters()).device
    outputs = task_outputs(task, model, features, batch_size or task.config.batch_size, device, autocast)
    predictions = task.predictions(split, features, outputs)
    metrics = task.metrics(split, predictions)
    records = [task.record(row, p) for row, p in zip(split.rows, predictions, strict=True)]
    return TaskResult(metrics, predictions, records)
