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

Every section is a dataclass with Literal choices and declared ranges, so an unknown key or value fails
with the closest valid one suggested while the recipe is read. The `peft` section and `objective.options`
depend on the method / objective chosen; plmkit.recipes.validate checks them against their option
dataclasses before anything is built.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import UNSET, Range, given_fields
from plmkit.data.objectives import OBJECTIVES
from plmkit.data.sources import SourceSpec  # path, weight, text_field, format, on_error
from plmkit.model.config import ACTIVATIONS, FAMILIES, NORMS, POSITIONS, ModelConfig
from plmkit.model.presets import PRESETS
from plmkit.tokenizer.special import FAMILIES as TOKENIZER_FAMILIES
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
    kind: Literal["bpe", "wordpiece", "unigram"] = "bpe"  # when training
    vocab_size: Annotated[int, Range(ge=1)] = 8192
    family: Literal[TOKENIZER_FAMILIES] | None = None  # special tokens of a family (bert, t5, glm, ...)


@dataclass
class DataConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    validation: list[SourceSpec] = field(default_factory=list)  # empty: hold out validation_fraction
    validation_fraction: Annotated[float, Range(ge=0, lt=1, off="0", means="no validation")] = (
        0.05  # of each source's blocks held out, when no validation sources
    )
    block_size: Annotated[int, Range(ge=1)] = 256
    cache_dir: str | None = None  # tokenized-store cache; default .cache/plmkit in the working directory


@dataclass
class ObjectiveConfig:
    name: Literal[tuple(OBJECTIVES)] = "clm"
    options: dict[str, Any] = field(
        default_factory=dict
    )  # the objective's fields; `model`: its model's options


# ModelConfig's enumerated fields, typed as the choices they take in a recipe
_CHOICES = {"family": FAMILIES, "position": POSITIONS, "norm": NORMS, "activation": ACTIVATIONS}


def _model_section() -> type:
    """The recipe's `model` section: `preset` plus every ModelConfig field, each optional (UNSET: the
    preset's value). Generated from ModelConfig so that a new architecture switch needs no edit here."""
    hints = typing.get_type_hints(ModelConfig, include_extras=True)  # with the ranges declared there
    fields: list[tuple[str, Any, Any]] = [("preset", Literal[tuple(PRESETS)] | None, field(default=UNSET))]
    for f in dataclasses.fields(ModelConfig):
        tp = Literal[_CHOICES[f.name]] if f.name in _CHOICES else hints[f.name]
        fields.append((f.name, tp, field(default=UNSET)))

    def overrides(self: Any) -> dict[str, Any]:
        """The ModelConfig fields this section sets (preset excluded)."""
        return {k: v for k, v in given_fields(self).items() if k != "preset"}

    return dataclasses.make_dataclass(
        "ModelSection", fields, namespace={"overrides": overrides, "__module__": __name__}
    )


ModelSection = _model_section()


@dataclass
class RecipeConfig:
    name: str = "run"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    model: ModelSection = field(default_factory=ModelSection)  # preset + ModelConfig fields
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
    overwrite: bool = False  # a new run moves a non-empty run folder aside (plmkit.recipes.runs)

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
