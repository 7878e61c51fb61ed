"""The fine-tuning recipe: one YAML file names the base model, the task, its data and the training run.

name: sst2
init_from: runs/minilm            # a plmkit or Hugging Face checkpoint (or model: {preset: ...} for random init)
task: {name: classification, max_length: 128}
data: {train: ../shared/data/sst2/train_first10k.tsv, dev: ../shared/data/sst2/dev.tsv,
       columns: {text: sentence, label: label}}
optim: {lr: 5.0e-5, weight_decay: 0.01}
train: {batch_size: 32}
epochs: 1                          # or train.steps
eval: {every: 100}                 # dev metrics every 100 steps (and at the end)
early_stopping: {metric: accuracy, patience: 3}
keep_best: true                    # <run>/best holds the checkpoint with the best dev metric
peft: {method: lora, r: 8}         # optional, as in pre-training; quantize: QLoRA's frozen base
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.data.tasks.rows import TaskDataConfig
from plmkit.evaluate.tasks.config import TaskConfig
from plmkit.recipes.config import ModelSection, TokenizerConfig
from plmkit.train.config import (
    CheckpointConfig,
    DistributedConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    QuantizeConfig,
    ScheduleConfig,
    TrainConfig,
)


@dataclass
class EarlyStoppingConfig:
    metric: str | None = None  # a dev metric (e.g. accuracy, f1); None: the task's main metric
    mode: Literal["max", "min"] = "max"  # max: higher is better
    patience: Annotated[int, Range(ge=0, off="0", means="never stop early")] = (
        0  # evaluations without improvement before training stops
    )


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # a plmkit or Hugging Face checkpoint; else model.preset from scratch
    model: ModelSection = field(
        default_factory=ModelSection
    )  # random init (with tokenizer.path); init_from: its dropout rates only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # path; default: init_from's
    peft: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.01, betas=(0.9, 0.999))
    )  # BERT's fine-tuning settings
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="linear", min_lr_ratio=0.0))
    train: TrainConfig = field(default_factory=TrainConfig)
    epochs: Annotated[float, Range(gt=0, off="null", means="train.steps decides")] | None = (
        None  # when set: train.steps = ceil(epochs x train features / (batch_size x accumulation x processes))
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    keep_best: bool = True  # <run>/best: a copy of the checkpoint with the best dev metric
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
