"""The `task` section of a fine-tuning recipe (and of `plm evaluate`): which task, and its settings.

One dataclass for every task, as litgpt keeps one config: a field that a task does not use is ignored by
it, and each field says which task reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range

TASK_NAMES = (
    "classification",
    "token_classification",
    "extractive_qa",
    "seq2seq",
    "spelling_correction",
    "pet",  # pattern-verbalizer training (plmkit.prompting): patterns, verbalizer in task.options
    "pet_distill",  # a classifier on the soft labels of PET's pattern models (plmkit.prompting)
    "icl",  # in-context learning (plmkit.prompting): evaluation only
    "cot",  # chain of thought (plmkit.prompting): evaluation only
)
TaskName = Literal[TASK_NAMES]


@dataclass
class TaskConfig:
    name: TaskName = "classification"
    max_length: Annotated[int, Range(ge=8)] = 128  # tokens per input (QA: per window), specials included
    batch_size: Annotated[int, Range(ge=1)] = 32  # rows per evaluation batch
    # classification
    regression: bool = False  # one output trained with MSE; Pearson / Spearman (SICK relatedness)
    pooling: Literal["cls", "mean", "last"] | None = None  # None: cls for encoders, last for causal LMs
    # token_classification
    strict: bool = False  # entity metrics in seqeval's strict IOB2 mode (default: conlleval's lenient one)
    # extractive_qa
    doc_stride: Annotated[int, Range(ge=1)] = 128  # tokens shared by consecutive windows of a long context
    n_best: Annotated[int, Range(ge=1)] = 20  # start / end candidates per window
    max_answer_length: Annotated[int, Range(ge=1)] = 30  # tokens
    qa_metric: Literal["squad", "cmrc"] = "squad"  # SQuAD v1.1 EM/F1, or CMRC 2018's (Chinese)
    # seq2seq and spelling_correction with a seq2seq model
    max_new_tokens: Annotated[int, Range(ge=1)] = 64
    num_beams: Annotated[int, Range(ge=1)] = 1
    # spelling_correction
    corrector: Literal["tagger", "seq2seq"] = "tagger"  # MacBERT4CSC per-character tagger, or a seq2seq model
    # pet, pet_distill, icl, cot: the paradigm's own settings (PetConfig / PetDistillConfig / IclConfig / CotConfig;
    # icl also train=FILE, encoder=DIR)
    options: dict[str, Any] = field(default_factory=dict)
    detection_weight: Annotated[float, Range(ge=0, le=1)] = (
        0.7  # w·detection + (1-w)·correction; 0.7 as macbert4csc (its w=0.3 weighs correction)
    )
