"""The reward-model recipe (`plm reward`): one YAML file names the base, the preference data and the run.

name: hh-rlhf-rm
init_from: models/all-MiniLM-L6-v2      # any causal or encoder base: a plmkit or Hugging Face folder
data: {train: ../shared/data/hh_rlhf_harmless_base/test.jsonl, train_rows: "300:",
       dev: ../shared/data/hh_rlhf_harmless_base/test.jsonl, dev_rows: ":300", format: hh, max_length: 256}
center_coef: 0.01                        # reward centering (Eisenstein et al. 2023): coef * mean((r_c + r_r)^2)
optim: {lr: 2.0e-5}
train: {batch_size: 16}
epochs: 1                                # or train.steps
peft: {method: lora, r: 8}               # optional; quantize: QLoRA's frozen base

The model is a RewardModel (plmkit.model.heads): a scalar score read at the last real token. A base LM or
encoder gets a new score head on its stack; a RewardModel checkpoint continues as it is; a head of several
outputs (a classifier of N > 1 labels, a tagger, span QA) is refused. The loss is Bradley-Terry,
-log σ(r_chosen - r_rejected - margin) with the rows' optional `margin` column; a K-way ranking (data.format
ranked) is one batch element whose C(K,2) pairs are averaged (InstructGPT). The dev split gives the pair
accuracy and the reward mean / std, stored with every checkpoint (trainer_state.json "reward_stats") so
that PPO can normalise the scores.

chat_template: for a causal base, as in plm sft (null: the tokenizer's own, else chatml when it has the
tokens, else plain); for an encoder, null writes conversations as HH transcripts ("Human: ... Assistant:
...") and the tokenizer's pair template ([CLS] prompt [SEP] response [SEP]) joins prompt and response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from plmkit.config.fields import Range
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


@dataclass
class RewardConfig:
    name: str = "reward"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # a plmkit or Hugging Face checkpoint; else model.preset from scratch
    model: ModelSection = field(
        default_factory=ModelSection
    )  # random init (with tokenizer.path); init_from: its dropout rates only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # path; default: init_from's
    chat_template: str | None = None  # a built-in name, Jinja source, or null (see the module docstring)
    peft: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    center_coef: Annotated[float, Range(ge=0, off="0", means="no centering")] = 0.0  # 0.01 recommended
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.0))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="linear", warmup_steps=0, min_lr_ratio=0.0)
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(batch_size=8)
    )  # pairs (rankings) per batch
    epochs: Annotated[float, Range(gt=0, off="null", means="train.steps decides")] | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)  # every: steps between dev evaluations
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
