"""PET's last step as a fine-tuning task (Schick & Schütze 2021, "Combining PVPs"): the pattern models'
label scores on unlabelled texts, ensembled with weights from each model's train accuracy before training,
become soft labels (temperature T = 2) that a sequence classifier learns by distillation.

    plm finetune pet.yaml task.options.pattern=0 name=p0     # task pet: one model per pattern (and seed)
    plm finetune pet.yaml task.options.pattern=1 name=p1
    plm finetune distill.yaml    # task: {name: pet_distill, options: {models: [runs/p0/best, runs/p1/best]}}
    plm pet pet.yaml             # the whole chain: every pattern model, then this distillation

The distillation recipe is a classification recipe: `init_from` is the pre-trained model (PET's final
classifier starts from the same one as the pattern models), `data.train` the labelled rows (only for the
weights), `data.unlabelled` the rows the classifier trains on, `data.dev` / `data.test` its metrics
(accuracy, macro-F1, MCC). Each model in `task.options.models` is a checkpoint of `plm finetune` with task
pet (`<run>/best` or a step folder): its trainer_state.json gives its patterns, verbalizer, pattern index,
max_length and the init_from it started from.

    accuracy_m = accuracy of model m's init_from, scored through m's pattern and verbalizer, on data.train
    w_m = accuracy_m / Σ accuracy          (weights=equal: 1 / M; pet/modeling.py merge_logits, "wmean" / "mean")
    s_m = label_scores(model m, its pattern, its verbalizer, unlabelled rows)        (N, L) mean log-probs
    q = softmax(Σ_m w_m·s_m / T)                                                    (N, L) the soft labels
    loss = Σ_rows −Σ_l q_l·log softmax(z / T)_l · T²        (pet.distillation_loss: PET's, up to q's entropy)

PET merges the verbalizer tokens' raw logits; a single-token word's log-prob differs from its logit by
the row's log-normaliser, the same for every label, so Σ_m w_m·s_m differs from PET's merged logits by a
constant per row (the weights sum to one) and the soft labels are PET's. The run folder records the
ensemble (metrics.json's "pet_ensemble") and every unlabelled row's soft labels (soft_labels.jsonl).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn

from plmkit.config import from_dict
from plmkit.config.fields import Range, check_ranges
from plmkit.data.tasks import LabelVocab, TaskSplit
from plmkit.errors import CheckpointError, ConfigError, DataError
from plmkit.evaluate.tasks.base import MODEL, Batch, Feature
from plmkit.evaluate.tasks.classification import Classification
from plmkit.evaluate.tasks.config import TaskConfig
from plmkit.files import read_json
from plmkit.prompting.pet import accuracy, distillation_loss, ensemble_logits, ensemble_weights, soft_labels
from plmkit.prompting.pet_task import PetConfig, PetTask


@dataclass
class PetDistillConfig:
    models: list[str] = field(
        default_factory=list
    )  # the pattern models: checkpoints of plm finetune, task pet
    temperature: Annotated[float, Range(gt=0)] = (
        2.0  # soft labels softmax(s / T) and the student's T (PET: 2)
    )
    weights: Literal["train_accuracy", "equal"] = "train_accuracy"  # PET's "wmean" (default) or "mean"


@dataclass
class PatternModel:
    checkpoint: Path
    pet: PetTask  # its pattern and verbalizer, as it was trained
    init_from: str  # the model it started from: its train accuracy before training


class PetDistill(Classification):
    name = "pet_distill"
    uses_unlabelled = True
    train_split = "unlabelled"

    def __init__(self, config: TaskConfig, tokenizer: Any, labels: LabelVocab | None = None) -> None:
        super().__init__(config, tokenizer, labels)
        self.options = from_dict(PetDistillConfig, dict(config.options), path="task.options")
        check_ranges(self.options, "task.options.")
        if not self.options.models:
            raise ConfigError(
                "task.options.models is empty; list the pattern models (checkpoints of plm finetune with "
                "task.name=pet), e.g. [runs/p0/best, runs/p1/best]"
            )
        self.models = [pattern_model(Path(m)) for m in self.options.models]
        names = [list(m.pet.labels.names) for m in self.models]
        for model, its in zip(self.models[1:], names[1:], strict=True):
            if sorted(its) != sorted(names[0]):
                raise ConfigError(
                    f"{model.checkpoint} labels {its} but {self.models[0].checkpoint} labels {names[0]}; "
                    "the pattern models of one ensemble share their verbalizer's labels"
                )
        self.verbalizer_labels = names[0]
        self.soft: torch.Tensor | None = None  # (N, L) soft labels of the unlabelled rows, in label order
        self._merged: torch.Tensor | None = None  # (N, L) the weighted mean of the models' scores
        self.report: dict[str, Any] = {}
        self._unlabelled: TaskSplit | None = None

    def columns(self):
        return ("text", "label"), ("text_pair", "id"), ("text", "text_pair")

    def label_vocab(self, train: TaskSplit) -> LabelVocab:
        """The pattern models' labels, in their verbalizer's order."""
        return LabelVocab(list(self.verbalizer_labels))

    # ---- the ensemble ------------------------------------------------------------------------------
    def prepare(self, splits: Mapping[str, TaskSplit]) -> None:
        if "unlabelled" not in splits:
            raise ConfigError("task pet_distill trains on unlabelled texts; set data.unlabelled=FILE")
        train, unlabelled = splits["train"], splits["unlabelled"]
        from plmkit.io import load

        accuracies = self._train_accuracies(train)
        if self.options.weights == "equal":
            weights = [1 / len(self.models)] * len(self.models)
        else:
            weights = ensemble_weights(accuracies)
        scores = []
        for m in self.models:  # one pattern model in memory at a time
            model, _ = load(m.checkpoint)
            scores.append(self._in_label_order(m, m.pet.scores(model, unlabelled)))  # (N, L)
            del model
        merged = ensemble_logits(scores, weights)  # (N, L)
        self.soft = soft_labels(merged, self.options.temperature)
        self._unlabelled, self._merged = unlabelled, merged
        self.report = {
            "temperature": self.options.temperature,
            "weights_from": self.options.weights,
            "labels": list(self.labels.names),
            "train_rows": len(train.rows),
            "unlabelled_rows": len(unlabelled.rows),
            "models": [
                {
                    "checkpoint": str(m.checkpoint),
                    "pattern": m.pet.config.patterns[m.pet.config.pattern],
                    "init_from": m.init_from,
                    "train_accuracy_before_training": a,
                    "weight": w,
                }
                for m, a, w in zip(self.models, accuracies, weights, strict=True)
            ],
        }

    def _train_accuracies(self, train: TaskSplit) -> list[float]:
        """Each model's init_from scored through its pattern on the labelled rows (loaded once each)."""
        from plmkit.io import load

        bases: dict[str, nn.Module] = {}
        out = []
        for m in self.models:
            if m.init_from not in bases:
                if not Path(m.init_from).is_dir():
                    raise ConfigError(
                        f"{m.checkpoint} was trained from init_from={m.init_from}, which does not exist here "
                        "(relative paths are relative to the working directory); its train accuracy before "
                        "training weighs it in the ensemble: run from the pattern runs' folder, or weights=equal"
                    )
                bases[m.init_from] = load(m.init_from)[0]
            targets = [m.pet.labels.encode(r.values["label"], r.where) for r in train.rows]
            out.append(accuracy(m.pet.scores(bases[m.init_from], train), targets))
        return out

    def _in_label_order(self, m: PatternModel, scores: torch.Tensor) -> torch.Tensor:
        """(N, L) columns of m's verbalizer order put in this task's label order."""
        theirs = list(m.pet.labels.names)
        return scores[:, [theirs.index(name) for name in self.labels.names]]

    # ---- data --------------------------------------------------------------------------------------
    def features(self, split: TaskSplit) -> list[Feature]:
        if split.name != self.train_split:
            return super().features(split)  # labelled rows: hard labels, the metrics of classification
        if self.soft is None or self._unlabelled is None or len(split.rows) != self.soft.shape[0]:
            raise DataError(f"{split.path}: the soft labels are made by prepare(splits) first")
        from plmkit.evaluate.tasks.classification import encode_texts

        out = []
        for i, row in enumerate(split.rows):
            pair = row.values.get("text_pair")
            ids, types = encode_texts(
                self.tokenizer,
                str(row.values["text"]),
                None if pair is None else str(pair),
                self.config.max_length,
            )
            out.append(
                {
                    "row": i,
                    "input_ids": ids,
                    "token_type_ids": types,
                    "label": -100,
                    "soft": self.soft[i].tolist(),
                }
            )
        return out  # fmt: skip

    def collate(self, features: Sequence[Feature]) -> Batch:
        batch = super().collate(features)
        if "soft" in features[0]:
            batch["soft_labels"] = torch.tensor([f["soft"] for f in features], dtype=torch.float32)  # (B, L)
        return batch

    # ---- training ----------------------------------------------------------------------------------
    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        if "soft_labels" not in batch:
            raise ConfigError("task pet_distill trains on the soft labels of data.unlabelled, not on labels")
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "soft_labels")}
        logits = models[MODEL](**inputs).logits  # (B, L)
        return distillation_loss(logits, batch["soft_labels"], self.options.temperature)

    __call__ = loss

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        return super().outputs(model, {k: v for k, v in batch.items() if k != "soft_labels"})

    # ---- what the run records ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {"pet_ensemble": self.report} if self.report else {}

    def run_files(self) -> dict[str, list[dict[str, Any]]]:
        if self.soft is None or self._merged is None or self._unlabelled is None:
            return {}
        names = self.labels.names
        records = [
            {
                "where": row.where,
                "soft_labels": dict(zip(names, soft, strict=True)),
                "ensemble_scores": dict(zip(names, merged, strict=True)),
            }
            for row, soft, merged in zip(
                self._unlabelled.rows, self.soft.tolist(), self._merged.tolist(), strict=True
            )
        ]
        return {"soft_labels.jsonl": records}


def pattern_model(checkpoint: Path) -> PatternModel:
    """A PET pattern model's checkpoint with the task it was trained with (its trainer_state.json)."""
    if not checkpoint.is_dir():
        raise ConfigError(
            f"task.options.models: {checkpoint} does not exist; give checkpoints of plm finetune runs with "
            "task.name=pet (e.g. runs/p0/best)"
        )
    try:
        recipe = (
            read_json(checkpoint / "trainer_state.json", "training checkpoint's state").get("recipe") or {}
        )
    except CheckpointError as e:
        raise ConfigError(f"task.options.models: {e}; give a checkpoint of a plm finetune run") from None
    task = recipe.get("task") or {}
    if task.get("name") != "pet" or not recipe.get("init_from"):
        raise ConfigError(
            f"task.options.models: {checkpoint} was trained with task {task.get('name')!r}"
            f"{'' if recipe.get('init_from') else ' from no init_from'}; list checkpoints of plm finetune "
            "with task.name=pet from a pre-trained init_from"
        )
    from plmkit.tokenizer import Tokenizer

    options = {"max_length": task.get("max_length", 128), "batch_size": task.get("batch_size", 32)}
    config = from_dict(
        PetConfig, {**options, **(task.get("options") or {})}, path=f"{checkpoint}: task.options"
    )
    return PatternModel(checkpoint, PetTask(config, Tokenizer.load(checkpoint)), str(recipe["init_from"]))
