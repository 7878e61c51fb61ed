"""Token classification (NER, POS) on pre-tokenized words with BIO / IOB2 tags: the first sub-token of
each word carries its tag, the others -100; entity-level precision / recall / F1 as seqeval computes
them (default, or strict IOB2 with task.strict=true).

Rows: `tokens` (a list of words, or one string split on whitespace) and `tags` (one per word, same form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskSplit
from plmkit.data.tasks.token_classification import align_word_labels, word_predictions
from plmkit.errors import DataError
from plmkit.evaluate.metrics import entity_scores
from plmkit.evaluate.tasks.base import MODEL, Batch, Feature, Task, pad_rows, with_body


def words_of(row: Row, column: str) -> list[str]:
    value = row.values[column]
    words = value.split() if isinstance(value, str) else [str(w) for w in value]
    if not words:
        raise DataError(f"{row.where}: {column} is empty; give at least one word")
    return words


class TokenClassification(Task):
    name = "token_classification"
    head = "TokenClassifier"
    main_metric = "f1"

    def columns(self):
        return ("tokens", "tags"), ("id",), ()

    def label_vocab(self, train: TaskSplit):
        from plmkit.data.tasks import LabelVocab

        return LabelVocab.from_rows(train.rows, "tags", train.path)

    def gold_tags(self, row: Row) -> list[str]:
        words, tags = words_of(row, "tokens"), words_of(row, "tags")
        if len(words) != len(tags):
            raise DataError(f"{row.where}: {len(words)} tokens but {len(tags)} tags; give one tag per token")
        return tags

    def features(self, split: TaskSplit) -> list[Feature]:
        out = []
        for i, row in enumerate(split.rows):
            tags = self.gold_tags(row)
            ids = [self.labels.encode(t, row.where) for t in tags]
            input_ids, labels, word_ids = align_word_labels(
                self.tokenizer, words_of(row, "tokens"), ids, self.config.max_length
            )
            out.append({"row": i, "input_ids": input_ids, "labels": labels, "word_ids": word_ids})
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
        return int((batch["labels"] != -100).sum())  # tagged words

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        out = models[MODEL](**batch)
        return out.loss_sum, int(out.targets)

    __call__ = loss

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        from plmkit.model.heads import TokenClassifier

        head = TokenClassifier(base.config, len(self.labels), labels=list(self.labels.names))
        return with_body(head, base, source)

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, T, n_labels)
        lengths = batch["attention_mask"].sum(1).tolist()
        return [row[:n] for row, n in zip(logits.argmax(-1).tolist(), lengths, strict=True)]

    def predictions(self, split, features, outputs) -> list[list[str]]:
        fill = self.labels.names.index("O") if "O" in self.labels.names else 0
        out = []
        for row, feature, tokens in zip(split.rows, features, outputs, strict=True):
            n = len(words_of(row, "tokens"))
            ids = word_predictions(tokens, feature["word_ids"], n, fill)
            out.append([self.labels.decode(i) for i in ids])
        return out

    def metrics(self, split: TaskSplit, predictions) -> dict[str, float]:
        gold = [self.gold_tags(row) for row in split.rows]
        scores = entity_scores(gold, list(predictions), mode="strict" if self.config.strict else "default")
        return {k: v for k, v in scores.items() if k in ("precision", "recall", "f1")}

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        return {
            "where": row.where,
            "tokens": words_of(row, "tokens"),
            "prediction": prediction,
            "tags": self.gold_tags(row),
        }
