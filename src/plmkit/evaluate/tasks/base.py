"""A fine-tuning task: how rows become features, the head it trains, its loss, and its metrics.

    task = build_task(config, tokenizer, labels)        # labels: built from the train split
    features = task.features(split)                     # one or more per row (QA windows)
    batch = task.collate(features[:8])                  # padded tensors
    loss_sum, count = task.loss({"model": model}, batch)   # the engine's (sum, count) contract
    result = evaluate_split(task, model, split)         # predictions per row + metrics (evaluate/tasks/run)

A task is data + a loss + a metric set on one engine (plmkit.train.loop), never a loop of its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from plmkit.data.tasks import LabelVocab, Row, TaskSplit
from plmkit.errors import CheckpointError, ConfigError
from plmkit.evaluate.tasks.config import TaskConfig
from plmkit.model.registry import model_class_name
from plmkit.weights import unwrap

Feature = dict[str, Any]  # token lists etc.; "row": the index of its row in the split
Batch = dict[str, torch.Tensor]
MODEL = "model"  # the recipe's model in the engine's dict of models


class Task:
    """The parts every task shares; a task fills in the rest (see the module docstring)."""

    name: ClassVar[str]
    head: ClassVar[str]  # the model class it trains and evaluates, e.g. "SequenceClassifier"
    uses_labels: ClassVar[bool] = True  # a label vocabulary built from the train split
    main_metric: ClassVar[str]  # the dev metric early stopping and keep_best watch by default
    uses_unlabelled: ClassVar[bool] = False  # reads data.unlabelled (rows without labels: PET)
    train_split: ClassVar[str] = "train"  # the split whose features the recipe trains on

    def __init__(self, config: TaskConfig, tokenizer: Any, labels: LabelVocab | None = None) -> None:
        self.config, self.tokenizer, self.labels = config, tokenizer, labels

    # ---- data --------------------------------------------------------------------------------------
    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(required, optional, text) canonical columns of a row (plmkit.data.tasks.read_split)."""
        raise NotImplementedError

    def label_vocab(self, train: TaskSplit) -> LabelVocab | None:
        return LabelVocab.from_rows(train.rows, "label", train.path) if self.uses_labels else None

    def prepare(self, splits: Mapping[str, TaskSplit]) -> None:
        """Called once by the recipe with every split it read, before any features are made (PET: the
        unlabelled texts of its auxiliary loss; PET distillation: the ensemble's soft labels)."""

    def features(self, split: TaskSplit) -> list[Feature]:
        raise NotImplementedError

    def collate(self, features: Sequence[Feature]) -> Batch:
        raise NotImplementedError

    # ---- model -------------------------------------------------------------------------------------
    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        """A fresh head model whose body is `base`'s (see `with_body`)."""
        raise NotImplementedError

    def check_model(self, model: nn.Module, source: str) -> None:
        """ConfigError unless `model` is the head this task evaluates (e.g. QA needs a span head)."""
        name = model_class_name(unwrap(_base_of(model)))
        if name != self.head:
            raise ConfigError(
                f"task {self.name} needs a {self.head} checkpoint but {source} holds a {name}; fine-tune "
                f"it first (plm finetune with task.name={self.name} and init_from={source}) or pick the "
                "task it was trained for"
            )

    # ---- training ----------------------------------------------------------------------------------
    def count(self, batch: Batch) -> int:
        """The targets of a batch (rows by default): the engine weights micro-batches by them."""
        return int(batch["input_ids"].shape[0])

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        """(loss summed over the batch's targets, their number): the model's mean loss times count."""
        n = self.count(batch)
        return models[MODEL](**batch).loss * n, n

    __call__ = loss  # the engine calls loss_fn(models, batch)

    # ---- evaluation --------------------------------------------------------------------------------
    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        """The model's raw outputs for a batch, one entry per feature (no gradients)."""
        raise NotImplementedError

    def predictions(self, split: TaskSplit, features: Sequence[Feature], outputs: Sequence[Any]) -> list[Any]:
        """One prediction per row of `split` from the outputs of its features."""
        raise NotImplementedError

    def metrics(self, split: TaskSplit, predictions: Sequence[Any]) -> dict[str, float]:
        raise NotImplementedError

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        """The line of predictions.jsonl for a row."""
        return {"where": row.where, "prediction": prediction}

    # ---- what the run records besides its metrics --------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Entries the recipe adds to the run's metrics.json (e.g. PET's ensemble weights)."""
        return {}

    def run_files(self) -> dict[str, list[dict[str, Any]]]:
        """JSONL files (name -> records) the recipe writes into the run folder (e.g. soft labels)."""
        return {}


def _base_of(model: nn.Module) -> nn.Module:
    """The model under a PEFT wrapper (prefix / prompt tuning wrap the base)."""
    return getattr(model, "base_model", model)


def with_body(head: nn.Module, base: nn.Module, source: str) -> nn.Module:
    """`head` with the stack (and BERT's pooler, when both have one) of `base`: the weights named
    `transformer.*` / `pooler.*` are copied, the rest of the head stays new and is reported as
    transformers reports new weights."""
    base = unwrap(base)
    config = getattr(base, "config", None)
    if config is None or not hasattr(base, "transformer"):
        raise ConfigError(
            f"{source} holds a {type(base).__name__}, which has no single Transformer stack to put a task "
            "head on; start from an encoder or decoder checkpoint (BERT, GPT, LLaMA, a plmkit LM)"
        )
    theirs = base.state_dict()
    ours = head.state_dict()
    body = {k: v for k, v in theirs.items() if k.split(".")[0] in ("transformer", "pooler") and k in ours}
    missing = [k for k in ours if k.startswith("transformer.") and k not in body]
    if missing:
        raise CheckpointError(
            f"{source}: its stack lacks {missing[:3]}; is it a model of another architecture?"
        )
    head.load_state_dict(body, strict=False)
    new = sorted(k for k in ours if k not in body)
    if new and model_class_name(base) != model_class_name(head):
        warnings.warn(
            f"Some weights of {type(head).__name__} were not initialized from the model checkpoint at {source} "
            f"and are newly initialized: {new}. You should probably TRAIN this model on a down-stream task "
            "to be able to use it for predictions and inference.",
            stacklevel=2,
        )
    return head


def family_of(model: nn.Module) -> str:
    return getattr(getattr(unwrap(model), "config", None), "family", "")


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """(B, T) int64, each row right-padded with `value` to the longest."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out
