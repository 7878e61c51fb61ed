"""PET as a fine-tuning task (evaluate/tasks/base.py's protocol) for classification rows (text, optional
text_pair, label): the model it trains is the masked LM itself, one model per pattern.

    task = PetTask(PetConfig(patterns=["{text} It was {mask}."], verbalizer={"0": ["bad"], "1": ["good"]}),
                   tokenizer)
    model = task.new_head(base, source)                       # the MaskedLM (a bare encoder gets an LM head)
    loss_sum, count = task({"model": model}, task.collate(task.features(train)[:8]))   # pet_loss
    zero = task.zero_shot(model, dev)                         # label_scores, no training: a TaskResult

The auxiliary MLM batch: each labelled row brings one pattern-encoded text whose non-special tokens are
masked BERT's way (mlm_probability, 80/10/10). Its text is a row of the unlabelled set given with
`add_unlabelled` (the fine-tuning recipe gives it data.unlabelled's rows through `prepare`), drawn by a
generator seeded from the batch's row indices and config.seed, so a batch is the same whenever it is
collated (an exact resume); without an unlabelled set it is the labelled row's own text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import nn

from plmkit.config.fields import Range, check_ranges
from plmkit.data.objectives.mlm import mask_tokens, selectable
from plmkit.data.tasks import LabelVocab, Row, TaskSplit
from plmkit.errors import ConfigError
from plmkit.evaluate.metrics import classification_metrics
from plmkit.evaluate.tasks.base import MODEL, Batch, Feature, Task, pad_rows
from plmkit.evaluate.tasks.run import TaskResult
from plmkit.prompting.patterns import Pattern, Verbalizer
from plmkit.prompting.pet import label_scores, mask_logits, pet_loss, verbalizer_logits


@dataclass
class PetConfig:
    patterns: list[str] = field(default_factory=list)  # templates (patterns.py); PET trains one model each
    verbalizer: dict[str, list[str]] = field(default_factory=dict)  # label -> its single-token words
    alpha: Annotated[float, Range(ge=0, le=1)] = 1e-4  # the MLM share of the loss (PET: 1e-4)
    pattern: Annotated[int, Range(ge=0)] = 0  # the index of the pattern this task trains and evaluates
    max_length: Annotated[int, Range(ge=8)] = 128  # tokens per input, specials and the mask included
    batch_size: Annotated[int, Range(ge=1)] = 32  # rows per evaluation batch
    mlm_probability: Annotated[float, Range(gt=0, lt=1)] = 0.15  # tokens of the unlabelled text masked
    seed: int = 0  # the auxiliary MLM batch's masking and unlabelled draws


class PetTask(Task):
    name = "pet"
    head = "MaskedLM"
    main_metric = "accuracy"
    uses_unlabelled = True  # data.unlabelled: the texts of the auxiliary MLM loss

    def __init__(self, config: PetConfig, tokenizer: Any, labels: LabelVocab | None = None) -> None:
        check_ranges(config, "task.options.")
        if not config.patterns:
            raise ConfigError(
                'task.options.patterns is empty; give one or more, e.g. ["{text} It was {mask}."]'
            )
        if config.pattern >= len(config.patterns):
            raise ConfigError(
                f"task.options.pattern={config.pattern} but there are {len(config.patterns)} patterns; pick 0.."
                f"{len(config.patterns) - 1}"
            )
        self.patterns = [Pattern.parse(t) for t in config.patterns]  # every template checked up front
        self.pattern = self.patterns[config.pattern]
        prefixes = (self.pattern.mask_prefix,)  # the words are tokenized as they follow this pattern's text
        verbalizer = Verbalizer(config.verbalizer, tokenizer, single_token=True, prefixes=prefixes)
        if labels is not None:  # a checkpoint's labels.json: the verbalizer follows its order
            known = set(verbalizer.labels)
            if set(labels.names) != known:
                raise ConfigError(
                    f"the checkpoint's labels {labels.names} differ from the verbalizer's {verbalizer.labels}; "
                    "map exactly the checkpoint's labels in task.verbalizer"
                )
            mapping = dict(zip(verbalizer.labels, verbalizer.words, strict=True))
            ordered = {n: mapping[n] for n in labels.names}
            verbalizer = Verbalizer(ordered, tokenizer, single_token=True, prefixes=prefixes)
        self.verbalizer = verbalizer
        super().__init__(config, tokenizer, labels or LabelVocab(list(verbalizer.labels)))  # type: ignore[arg-type]
        self.unlabelled: list[list[int]] = []

    # ---- data --------------------------------------------------------------------------------------
    def columns(self):
        return ("text", "label"), ("text_pair", "id"), ("text", "text_pair")

    def label_vocab(self, train: TaskSplit) -> LabelVocab:
        """The verbalizer's labels, in its order (a train label it lacks is a DataError in `features`)."""
        return LabelVocab(list(self.verbalizer.labels))

    def features(self, split: TaskSplit) -> list[Feature]:
        out = []
        for i, row in enumerate(split.rows):
            ids, positions = self.pattern.encode(
                self.tokenizer, row.values, self.config.max_length, 1, row.where
            )
            label = self.labels.encode(row.values["label"], row.where) if "label" in row.values else -100
            out.append({"row": i, "input_ids": ids, "mask_position": positions[0], "label": label})
        return out

    def prepare(self, splits: Mapping[str, TaskSplit]) -> None:
        """The recipe's data.unlabelled, when given, is the auxiliary MLM's text (PET's unlabelled set)."""
        if "unlabelled" in splits:
            self.add_unlabelled(splits["unlabelled"].rows)

    def add_unlabelled(self, rows: Sequence[Row]) -> None:
        """Texts for the auxiliary MLM loss (PET's unlabelled set), encoded with this task's pattern."""
        self.unlabelled = [
            self.pattern.encode(self.tokenizer, row.values, self.config.max_length, 1, row.where)[0]
            for row in rows
        ]

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        words = self.verbalizer.single_token_ids(self.pattern.mask_prefix)  # [label][word]
        width = max(len(w) for w in words)
        table = torch.tensor([w + [-1] * (width - len(w)) for w in words])  # (L, W), -1: no word
        batch = _padded([f["input_ids"] for f in features], pad)
        batch["mask_positions"] = torch.tensor([f["mask_position"] for f in features])
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        batch["label_word_ids"] = table.expand(len(features), -1, -1).clone()  # (B, L, W): one per row
        if self.config.alpha > 0:
            batch.update(self._mlm_batch(features, pad))
        return batch

    def _mlm_batch(self, features: Sequence[Feature], pad: int) -> Batch:
        """mlm_input_ids / mlm_attention_mask / mlm_labels (B, T'): one masked text per labelled row."""
        seed = self.config.seed
        for f in features:  # the batch's rows fix its draws: the same batch on every collate
            seed = (seed * 1_000_003 + int(f["row"]) + 1) % (2**61 - 1)
        generator = torch.Generator().manual_seed(seed)
        if self.unlabelled:
            picks = torch.randint(len(self.unlabelled), (len(features),), generator=generator).tolist()
            texts = [self.unlabelled[i] for i in picks]
        else:
            texts = [f["input_ids"] for f in features]
        plain = _padded(texts, pad)
        special = torch.tensor(sorted({i for i in self.tokenizer.all_special_ids if i is not None}))
        allowed = selectable(plain["input_ids"], plain["attention_mask"], special)
        chosen = allowed & (torch.rand(allowed.shape, generator=generator) < self.config.mlm_probability)
        inputs, labels = mask_tokens(plain["input_ids"], chosen, self.tokenizer, generator)
        return {"mlm_input_ids": inputs, "mlm_attention_mask": plain["attention_mask"], "mlm_labels": labels}

    # ---- model -------------------------------------------------------------------------------------
    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        """The masked LM itself (PET trains its LM head at the mask); a bare encoder gets a new LM head."""
        from plmkit.model.heads import TransformerModel, with_new_lm_head
        from plmkit.model.transformer import MaskedLM

        if isinstance(base, TransformerModel):
            base = with_new_lm_head(base, source)
        if not isinstance(base, MaskedLM):
            raise ConfigError(
                f"PET trains a masked LM at its [MASK], but {source} holds a {type(base).__name__}; start from "
                "a BERT-style checkpoint (a causal or seq2seq LM can still be scored zero-shot: label_scores)"
            )
        return base

    # ---- training ----------------------------------------------------------------------------------
    def count(self, batch: Batch) -> int:
        return int((batch["labels"] != -100).sum())

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        return pet_loss(models[MODEL], batch, self.config.alpha)

    __call__ = loss

    # ---- evaluation --------------------------------------------------------------------------------
    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        positions = batch["mask_positions"][:, None]  # (B, 1)
        at_mask = mask_logits(model, batch["input_ids"], batch["attention_mask"], positions)[:, 0]  # (B, V)
        return verbalizer_logits(at_mask.float(), batch["label_word_ids"]).argmax(-1).tolist()

    def predictions(self, split, features, outputs) -> list[Any]:
        return list(outputs)  # one feature per row, in row order

    def targets(self, split: TaskSplit) -> list[int]:
        return [self.labels.encode(row.values["label"], row.where) for row in split.rows]

    def metrics(self, split: TaskSplit, predictions: Sequence[Any]) -> dict[str, float]:
        return classification_metrics(list(predictions), self.targets(split))

    def record(self, row: Row, prediction: Any) -> dict[str, Any]:
        return {
            "where": row.where,
            "prediction": self.labels.decode(prediction),
            "label": row.values.get("label"),
        }

    def scores(self, model: nn.Module, split: TaskSplit) -> torch.Tensor:
        """(N, n_labels) label_scores of this task's pattern and verbalizer (any LM family, no training):
        the per-pattern scores an ensemble combines."""
        return label_scores(
            model,
            self.tokenizer,
            self.pattern,
            self.verbalizer,
            split.rows,
            self.config.max_length,
            self.config.batch_size,
        )

    def zero_shot(self, model: nn.Module, split: TaskSplit) -> TaskResult:
        """Metrics and predictions from label_scores without training; on the train split its accuracy
        is the pattern's ensemble weight (ensemble_weights)."""
        predictions = self.scores(model, split).argmax(-1).tolist()
        records = [self.record(row, p) for row, p in zip(split.rows, predictions, strict=True)]
        return TaskResult(self.metrics(split, predictions), predictions, records)


def _padded(rows: Sequence[Sequence[int]], pad: int) -> Batch:
    input_ids = pad_rows(rows, pad)  # (B, T)
    lengths = torch.tensor([len(r) for r in rows])
    return {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
    }
