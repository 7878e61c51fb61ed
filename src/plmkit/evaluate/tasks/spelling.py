"""Chinese spelling correction (SIGHAN 13/14/15): character-aligned `source` / `target` rows, scored with
the ReaLiSe / CCL2022-CLTC sentence-level detection and correction P / R / F1 + accuracy, and the
character-level ones (plmkit.evaluate.metrics.csc_scores).

Two correctors (task.corrector):
- tagger: MacBERT4CSC (plmkit.model.csc.SpellingCorrector), a masked LM that predicts every character
  plus a detection head, loss w·detection + (1-w)·correction (task.detection_weight);
- seq2seq: an encoder-decoder that rewrites the sentence (BART / T5), its output kept only when it has
  the source's length (else the source is kept: a CSC prediction must stay aligned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskSplit
from plmkit.data.tasks.spelling import apply_corrections, csc_example, pad_csc_batch, predict_ids
from plmkit.errors import ConfigError, DataError
from plmkit.evaluate.metrics import csc_scores
from plmkit.evaluate.tasks.base import MODEL, Batch, Feature, Task, family_of
from plmkit.evaluate.tasks.seq2seq import Seq2Seq


def pair_of(row: Row) -> tuple[str, str]:
    source, target = str(row.values["source"]), str(row.values["target"])
    if len(source) != len(target):
        raise DataError(
            f"{row.where}: source has {len(source)} characters but target {len(target)}; spelling "
            "correction pairs must be character-aligned (same length)"
        )
    return source, target


class CSCMetrics:
    """What both correctors share: the columns, the CSC metrics and the prediction records."""

    name = "spelling_correction"
    uses_labels = False
    main_metric = "sentence_correction_f1"

    def columns(self):
        return ("source", "target"), ("id",), ("source", "target")

    def metrics(self, split: TaskSplit, predictions) -> dict[str, float]:
        sources, targets = zip(*(pair_of(row) for row in split.rows), strict=True)
        scores = csc_scores(list(sources), list(predictions), list(targets))
        return {k: v for k, v in scores.items() if isinstance(v, float)}

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        source, target = pair_of(row)
        return {"where": row.where, "source": source, "prediction": prediction, "target": target}


class SpellingTagger(CSCMetrics, Task):
    head = "SpellingCorrector"

    def features(self, split: TaskSplit) -> list[Feature]:
        out = []
        for i, row in enumerate(split.rows):
            source, target = pair_of(row)
            out.append({"row": i, **csc_example(self.tokenizer, source, target, self.config.max_length)})
        return out

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        return pad_csc_batch(features, pad)

    def count(self, batch: Batch) -> int:
        return int((batch["labels"] != -100).sum())  # characters

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        out = models[MODEL](**batch)
        return out.loss_sum, int(out.targets)

    __call__ = loss

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        from plmkit.model.csc import SpellingCorrector
        from plmkit.model.heads import TransformerModel, with_new_lm_head
        from plmkit.model.transformer import MaskedLM

        if isinstance(base, TransformerModel):
            base = with_new_lm_head(base, source)
        if not isinstance(base, MaskedLM):
            raise ConfigError(
                f"task.corrector=tagger (MacBERT4CSC) starts from a masked LM, but {source} holds a "
                f"{type(base).__name__}; start from a BERT-style checkpoint or use task.corrector=seq2seq"
            )
        return SpellingCorrector.from_masked_lm(base, detection_weight=self.config.detection_weight)

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        out = model(batch["input_ids"], batch["attention_mask"])
        return predict_ids(out.logits, batch["input_ids"], batch["attention_mask"]).tolist()

    def predictions(self, split, features, outputs) -> list[str]:
        return [
            apply_corrections(pair_of(row)[0], ids, self.tokenizer)
            for row, ids in zip(split.rows, outputs, strict=True)
        ]


class SpellingSeq2Seq(CSCMetrics, Seq2Seq):
    def predictions(self, split, features, outputs) -> list[str]:
        out = []
        for row, text in zip(split.rows, outputs, strict=True):
            source = pair_of(row)[0]
            text = "".join(str(text).split()) if not any(c.isspace() for c in source) else str(text)
            out.append(text if len(text) == len(source) else source)
        return out


def spelling_task(config: Any, tokenizer: Any, labels: Any = None) -> Task:
    """The spelling-correction task of task.corrector (tagger or seq2seq)."""
    cls = SpellingSeq2Seq if config.corrector == "seq2seq" else SpellingTagger
    return cls(config, tokenizer, labels)


__all__ = ["SpellingSeq2Seq", "SpellingTagger", "family_of", "spelling_task"]
