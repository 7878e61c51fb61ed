"""Sequence-to-sequence fine-tuning of an encoder–decoder (BART, T5): teacher-forced cross entropy over
the target tokens, greedy or beam-search generation for evaluation, and BLEU (sacrebleu) / ROUGE
(rouge-score) from the `metrics` extra, plus exact match.

Rows: `source` and `target` texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskSplit
from plmkit.errors import ConfigError
from plmkit.evaluate.metrics import bleu, rouge
from plmkit.evaluate.tasks.base import MODEL, Batch, Feature, Task, family_of, pad_rows
from plmkit.evaluate.tasks.classification import encode_texts


class Seq2Seq(Task):
    name = "seq2seq"
    head = "Seq2SeqLM"
    uses_labels = False
    main_metric = "bleu"

    def columns(self):
        return ("source", "target"), ("id",), ("source", "target")

    def features(self, split: TaskSplit) -> list[Feature]:
        n = self.config.max_length
        out = []
        for i, row in enumerate(split.rows):
            source, _ = encode_texts(self.tokenizer, str(row.values["source"]), None, n)
            target, _ = encode_texts(self.tokenizer, str(row.values["target"]), None, n)
            out.append({"row": i, "input_ids": source, "labels": target})
        return out

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        input_ids = pad_rows([f["input_ids"] for f in features], pad)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        return {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
            "labels": pad_rows([f["labels"] for f in features], -100),
        }

    def count(self, batch: Batch) -> int:
        return int((batch["labels"] != -100).sum())  # target tokens

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        out = models[MODEL](**batch)
        return out.loss_sum, int(out.targets)

    __call__ = loss

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        if family_of(base) != "seq2seq":
            raise ConfigError(
                f"task {self.name} trains an encoder-decoder model, but {source} is a "
                f"{family_of(base) or type(base).__name__} model; start from a BART or T5 checkpoint"
            )
        return base

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        from plmkit.generation import generate_ids

        ids = generate_ids(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=self.config.max_new_tokens,
            num_beams=self.config.num_beams,
        )
        return self.tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)

    def predictions(self, split, features, outputs) -> list[str]:
        return [str(text).strip() for text in outputs]

    def metrics(self, split: TaskSplit, predictions) -> dict[str, float]:
        targets = [str(row.values["target"]) for row in split.rows]
        exact = sum(p == t for p, t in zip(predictions, targets, strict=True)) / max(len(targets), 1)
        return {
            "exact_match": 100.0 * exact,
            "bleu": bleu(predictions, targets),
            **rouge(predictions, targets),
        }

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        return {"where": row.where, "prediction": prediction, "target": row.values["target"]}
