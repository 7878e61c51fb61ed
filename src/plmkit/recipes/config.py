"""The recipe: one YAML file names everything a pre-training run needs (see recipes/*.yaml).

    name: gpt-clm
    model: {preset: gpt2-tiny, n_layer: 4}          # a preset and/or ModelConfig fields
    tokenizer: {train: {kind: bpe, vocab_size: 8192}}  # or {path: runs/tok}
    data: {sources: [{path: corpus.txt}], block_size: 256}
    objective: {name: clm}
    optim: {lr: 6.0e-4, weight_decay: 0.1}
    schedule: {kind: cosine, warmup_steps: 100}
    train: {steps: 2000, batch_size: 16, accumulation: 1, precision: bf16}
    peft: {method: lora, r: 8, target: all-linear}  # optional: parameter-efficient (plmkit.peft.apply)
    quantize: {mode: int8}                            # optional, with peft: QLoRA on a frozen int8 / nf4 base
    distributed: {strategy: fsdp}                     # with plm pretrain ... --nproc N (train/distributed/)

Every section is a dataclass, so an unknown key fails with the closest valid one suggested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plmkit.data.sources import SourceSpec  # path, weight, text_field, format, on_error
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
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer (or checkpoint) folder
    kind: str = "bpe"  # when training: bpe | wordpiece | unigram
    vocab_size: int = 8192
    family: str | None = None  # special tokens of a family (bert, t5, glm, ...)


@dataclass
class DataConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    validation: list[SourceSpec] = field(default_factory=list)  # empty: hold out validation_fraction
    validation_fraction: float = 0.05  # of the documents, when no validation sources are given
    block_size: int = 256
    cache_dir: str | None = None  # tokenized-store cache; default .cache/plmkit in the working directory


@dataclass
class ObjectiveConfig:
    name: str = "clm"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecipeConfig:
    name: str = "run"
    out_dir: str = "runs/{name}"
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # preset + ModelConfig fields
    init_from: str | None = None  # continual pre-training: a plmkit or Hugging Face checkpoint
    peft: dict[str, Any] = field(default_factory=dict)  # e.g. {method: lora, r: 8}; empty: train everything
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)  # QLoRA's frozen quantized base
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False  # true: the latest checkpoint in out_dir; a path: that checkpoint

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
