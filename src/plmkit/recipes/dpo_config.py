"""The DPO recipe (`plm dpo`): one YAML file names the policy, its reference, the preference data and the run.

name: dpo-hh
init_from: runs/gpt-clm/checkpoints/step-00002000   # a plmkit or Hugging Face causal LM (often an SFT model)
data: {train: ../shared/data/hh_rlhf_harmless_base/test.jsonl, train_rows: "300:",
       dev: ../shared/data/hh_rlhf_harmless_base/test.jsonl, dev_rows: ":300", format: hh,
       max_length: 256, max_prompt_length: 192}
loss_type: sigmoid          # sigmoid | hinge | ipo (ipo on per-token-averaged log-ratios)
beta: 0.1
label_smoothing: 0.0        # sigmoid only: cDPO's probability that a label is flipped
rpo_alpha: null             # a number: + alpha x the NLL per token of the chosen response (RPO)
reference: null             # null: the initial policy (a frozen copy; the base itself under LoRA / adapters)
precompute_reference: false # true: the reference's log-probs once, before training, stored in the run folder
optim: {lr: 5.0e-6}
train: {batch_size: 8}
epochs: 1                   # or train.steps
peft: {method: lora, r: 8}  # optional: then the reference is the policy with its adapters off

`reference: PATH` takes another checkpoint as the reference (it must share the policy's tokenizer). The
chat template is picked as plm sft picks it (chat_template: null: the tokenizer's own, else chatml when it
has the tokens, else plain); the policy's checkpoints carry it in their tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.recipes.config import ModelSection, TokenizerConfig
from plmkit.recipes.preference_data import PreferenceDataConfig
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

DpoLossType = Literal["sigmoid", "hinge", "ipo"]


@dataclass
class DpoConfig:
    name: str = "dpo"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # a plmkit or Hugging Face causal LM; else model.preset from scratch
    model: ModelSection = field(
        default_factory=ModelSection
    )  # random init (with tokenizer.path); init_from: its dropout rates only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # path; default: init_from's
    chat_template: str | None = None  # a built-in name, Jinja source, or null (as plm sft)
    peft: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    loss_type: DpoLossType = "sigmoid"  # sigmoid | hinge | ipo
    beta: Annotated[float, Range(gt=0)] = 0.1  # the strength of the pull to the reference
    label_smoothing: Annotated[float, Range(ge=0, lt=0.5, off="0", means="no smoothing")] = 0.0
    rpo_alpha: Annotated[float, Range(gt=0, off="null", means="no NLL term")] | None = None
    reference: str | None = None  # another checkpoint as the reference; null: the initial policy
    precompute_reference: bool = False  # the reference's log-probs once, stored in the run folder
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, weight_decay=0.0))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="linear", warmup_steps=0, min_lr_ratio=0.0)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8))  # pairs per batch
    epochs: Annotated[float, Range(gt=0, off="null", means="train.steps decides")] | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)  # every: steps between dev evaluations
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError(
                f"label_smoothing={self.label_smoothing} applies to loss_type sigmoid only (cDPO), not "
                f"{self.loss_type}; set label_smoothing=0 or loss_type=sigmoid"
            )

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
