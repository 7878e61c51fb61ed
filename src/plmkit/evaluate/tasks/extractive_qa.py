"""Extractive QA (SQuAD v1.1, CMRC 2018): windows of the context with a doc stride, start / end logits,
the n-best spans within max_answer_length mapped back to the context's characters, and EM / F1 exactly
as the official SQuAD v1.1 script (task.qa_metric=squad) or CMRC 2018's script (cmrc).

Rows: `question`, `context`, `answers` = {"text": [...], "answer_start": [...]} (the SQuAD json format is
read as such rows); training uses the first answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskSplit
from plmkit.data.tasks.extractive_qa import best_answers, qa_features
from plmkit.evaluate.metrics import cmrc_scores, squad_scores
from plmkit.evaluate.tasks.base import Batch, Feature, Task, pad_rows, with_body


def gold_answers(row: Row) -> list[str]:
    answers = row.values.get("answers") or {}
    return [str(t) for t in answers.get("text", [])]


class ExtractiveQA(Task):
    name = "extractive_qa"
    head = "SpanQA"
    uses_labels = False
    main_metric = "f1"

    def columns(self):
        return ("question", "context", "answers"), ("id", "title"), ("question", "context")

    def features(self, split: TaskSplit) -> list[Feature]:
        c = self.config
        out: list[Feature] = []
        for i, row in enumerate(split.rows):
            answers = row.values["answers"]
            first = (answers.get("answer_start") or [None])[0], (answers.get("text") or [None])[0]
            for window in qa_features(
                self.tokenizer, str(row.values["question"]), str(row.values["context"]), i,
                c.max_length, c.doc_stride, answer_start=first[0], answer_text=first[1],
            ):  # fmt: skip
                out.append({"row": i, **vars(window)})
        return out

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        input_ids = pad_rows([f["input_ids"] for f in features], pad)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        return {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
            "token_type_ids": pad_rows([f["token_type_ids"] for f in features], 0),
            "start_positions": torch.tensor([f["start_position"] for f in features]),
            "end_positions": torch.tensor([f["end_position"] for f in features]),
        }

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        from plmkit.model.heads import SpanQA

        return with_body(SpanQA(base.config), base, source)

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        lengths = batch["attention_mask"].sum(1).tolist()
        starts, ends = out.start_logits.tolist(), out.end_logits.tolist()
        return [(s[:n], e[:n]) for s, e, n in zip(starts, ends, lengths, strict=True)]

    def predictions(self, split, features, outputs) -> list[str]:
        windows: dict[int, list[int]] = defaultdict(list)
        for j, feature in enumerate(features):
            windows[feature["row"]].append(j)
        from plmkit.data.tasks.extractive_qa import QAFeature

        out = []
        for i, row in enumerate(split.rows):
            chosen = windows.get(i, [])
            qa = [QAFeature(**{k: v for k, v in features[j].items() if k != "row"}) for j in chosen]
            best = best_answers(
                qa, [outputs[j][0] for j in chosen], [outputs[j][1] for j in chosen],
                str(row.values["context"]), self.config.n_best, self.config.max_answer_length,
            )  # fmt: skip
            out.append(best[0][0] if best else "")
        return out

    def metrics(self, split: TaskSplit, predictions) -> dict[str, float]:
        preds = {str(i): p for i, p in enumerate(predictions)}
        golds = {str(i): gold_answers(row) for i, row in enumerate(split.rows)}
        scores = (cmrc_scores if self.config.qa_metric == "cmrc" else squad_scores)(preds, golds)
        return {k: float(v) for k, v in scores.items() if k in ("exact_match", "f1", "average")}

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        return {
            "where": row.where,
            "id": row.values.get("id"),
            "prediction": prediction,
            "answers": gold_answers(row),
        }
