"""Sequence classification of single texts and text pairs (SST-2, ChnSentiCorp, SNLI, OCNLI, TNEWS), and
regression on pairs (SICK relatedness): accuracy, macro-F1 and MCC, or Pearson / Spearman.

The text (and pair) are encoded with the tokenizer's own template ([CLS] a [SEP] b [SEP]), the longer
side truncated first, as transformers' `truncation=True` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskSplit, regression_targets
from plmkit.errors import DataError
from plmkit.evaluate.metrics import classification_metrics, regression_metrics
from plmkit.evaluate.tasks.base import Batch, Feature, Task, family_of, pad_rows, with_body


def encode_texts(tokenizer: Any, text: str, pair: str | None, max_length: int) -> tuple[list[int], list[int]]:
    """(ids, token types) of `text` (and `pair`) with the tokenizer's template, within max_length: the
    longer side loses a token at a time (transformers' "longest_first")."""
    backend = tokenizer.backend
    first = backend.encode(text, add_special_tokens=False)
    second = backend.encode(pair, add_special_tokens=False) if pair is not None else None
    room = max_length - backend.num_special_tokens_to_add(second is not None)
    a, b = len(first.ids), len(second.ids) if second is not None else 0
    while a + b > max(room, 0):
        if a >= b:
            a -= 1
        else:
            b -= 1
    first.truncate(a)
    if second is not None:
        second.truncate(b)
    encoding = backend.post_process(first, second)
    return list(encoding.ids), list(encoding.type_ids)


class Classification(Task):
    name = "classification"
    head = "SequenceClassifier"

    @property
    def uses_labels(self) -> bool:  # type: ignore[override]
        return not self.config.regression

    @property
    def main_metric(self) -> str:
        return "pearson" if self.config.regression else "accuracy"

    def columns(self):
        return ("text", "label"), ("text_pair", "id"), ("text", "text_pair")

    def targets(self, split: TaskSplit) -> list[Any]:
        if self.config.regression:
            return regression_targets(split.rows, "label")
        return [self.labels.encode(row.values["label"], row.where) for row in split.rows]

    def features(self, split: TaskSplit) -> list[Feature]:
        targets = self.targets(split)
        out = []
        for i, row in enumerate(split.rows):
            ids, types = encode_texts(
                self.tokenizer, str(row.values["text"]), _pair(row), self.config.max_length
            )
            out.append({"row": i, "input_ids": ids, "token_type_ids": types, "label": targets[i]})
        return out

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        input_ids = pad_rows([f["input_ids"] for f in features], pad)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        batch = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
            "token_type_ids": pad_rows([f["token_type_ids"] for f in features], 0),
        }
        dtype = torch.float32 if self.config.regression else torch.long
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=dtype)
        return batch

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        from plmkit.model.heads import SequenceClassifier

        config = base.config
        pooling = self.config.pooling or ("last" if family_of(base) == "causal" else "cls")
        has_pooler = getattr(base, "pooler", None) is not None  # BERT's dense + tanh on [CLS]
        names = None if self.config.regression else list(self.labels.names)
        head = SequenceClassifier(
            config,
            num_labels=1 if self.config.regression else len(self.labels),
            pooling=pooling,
            pooler_dense=has_pooler and pooling == "cls",
            labels=names,
        )
        return with_body(head, base, source)

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**batch).logits.float()  # (B, n_labels)
        if self.config.regression:
            return logits[:, 0].tolist()
        return logits.argmax(-1).tolist()

    def predictions(self, split, features, outputs) -> list[Any]:
        return list(outputs)  # one feature per row, in row order

    def metrics(self, split: TaskSplit, predictions: Sequence[Any]) -> dict[str, float]:
        if self.config.regression:
            return regression_metrics(predictions, regression_targets(split.rows, "label"))
        return classification_metrics(predictions, self.targets(split))

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        shown = prediction if self.config.regression else self.labels.decode(prediction)
        return {"where": row.where, "prediction": shown, "label": row.values["label"]}


def _pair(row: Row) -> str | None:
    pair = row.values.get("text_pair")
    if pair is None:
        return None
    if not str(pair).strip():
        raise DataError(f"{row.where}: text_pair is empty; fill both sides of the pair or drop the row")
    return str(pair)
