"""The PPO recipe (RLHF with InstructGPT's pre-training mix, PPO-ptx): one YAML file names the SFT policy,
the reward model, the prompts, the pre-training data and the run.

name: ppo-arithmetic
init_from: runs/sft/checkpoints/step-00000300      # the SFT model: the actor and the frozen reference
reward_model: runs/rm/checkpoints/step-00000200    # plm reward's checkpoint: frozen, and the critic's init
data: {train: prompts.jsonl, dev: dev.jsonl, format: prompt, max_prompt_length: 32}
generation: {max_new_tokens: 8, temperature: 1.0}
ppo: {batch_size: 64, mini_batch_size: 16, epochs: 4, kl_coef: 0.05, kl_estimator: k1,
      adaptive_kl: false, missing_eos_penalty: 1.0}
ptx: {coef: 27.8, data: {sources: [{path: pretrain.txt}], block_size: 64}, batch_size: 4}
verifier: [{function: arithmetic}]               # optional: logs the accuracy of the completions
train: {steps: 50, batch_size: 16}               # PPO steps (rollout + epochs); completions per micro-batch
peft: {method: lora, r: 8}                       # optional: LoRA actor and critic on one shared frozen base

One step samples ppo.batch_size completions (data.train's prompts in shuffled epochs, samples_per_prompt
each), scores them (the reward model's score at the last token, normalised with its stored mean / std,
a missing-EOS penalty, clipped; minus kl_coef · KL to the reference per token), computes GAE advantages
(whitened) and returns, then trains ppo.epochs passes over them in shuffled mini-batches of
ppo.mini_batch_size completions: one optimizer step of actor and critic per mini-batch, whose loss is the
clipped policy loss + vf_coef · the clipped value loss + ptx.coef · the pre-training NLL of ptx.batch_size
blocks per micro-batch (InstructGPT's γ, 27.8 in the paper: one loss, one backward, one step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.recipes.config import DataConfig, ModelSection, TokenizerConfig
from plmkit.recipes.grpo_config import GenerationSection, GrpoDataConfig, GrpoEvalConfig, RewardSpec
from plmkit.train.config import (
    CheckpointConfig,
    DistributedConfig,
    LogConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

KlEstimator = Literal["k1", "k3"]


@dataclass
class PpoSection:
    """The PPO update (plmkit.align.ppo, plmkit.align.kl)."""

    batch_size: Annotated[int, Range(ge=1)] = 64  # completions sampled per step
    mini_batch_size: Annotated[int, Range(ge=1)] = 16  # completions per optimizer step
    epochs: Annotated[int, Range(ge=1)] = 4  # passes over a step's completions
    clip_eps: Annotated[float, Range(gt=0, lt=1)] = 0.2  # the policy ratio clipped to 1 ± clip_eps
    value_clip: Annotated[float, Range(gt=0, off="null", means="no value clipping")] | None = 0.2
    vf_coef: Annotated[float, Range(ge=0)] = 0.1  # the value loss's weight in the one loss
    gamma: Annotated[float, Range(ge=0, le=1)] = 1.0
    lam: Annotated[float, Range(ge=0, le=1)] = 0.95
    whiten_advantages: bool = True
    kl_estimator: KlEstimator = "k1"  # k1: logp - logp_ref (InstructGPT); k3: unbiased and >= 0
    kl_coef: Annotated[float, Range(ge=0)] = (
        0.05  # β of the per-token KL penalty (the initial one if adaptive)
    )
    adaptive_kl: bool = False  # Ziegler et al.'s controller: β moves toward kl_target
    kl_target: Annotated[float, Range(gt=0)] = 6.0  # KL per completion (summed over its tokens) to aim at
    kl_horizon: Annotated[int, Range(ge=1)] = 10000  # completions over which β may move by ~20%
    normalize_reward: bool = True  # (score - mean) / std with the reward model's stored statistics
    reward_clip: Annotated[float, Range(gt=0, off="null", means="no clipping")] | None = 5.0
    missing_eos_penalty: Annotated[float, Range(ge=0, off="null", means="no penalty")] | None = None


@dataclass
class PtxSection:
    """InstructGPT's pre-training mix: coef · the causal LM NLL (mean per token) of pre-training blocks,
    added to every mini-batch's loss. With coef 0 the data (when given) still measures the pre-training
    loss on its validation blocks."""

    coef: Annotated[float, Range(ge=0, off="0", means="no pre-training mix")] = 0.0  # γ (InstructGPT: 27.8)
    data: DataConfig = field(default_factory=lambda: DataConfig(validation_fraction=0.05, block_size=128))
    batch_size: Annotated[int, Range(ge=1)] = 4  # pre-training blocks per micro-batch


@dataclass
class EmaSection:
    """An exponential moving average of the actor's trained weights, written as <run>/ema at the end."""

    decay: Annotated[float, Range(ge=0, lt=1, off="0", means="no EMA")] = 0.0  # per optimizer step


@dataclass
class PpoEvalConfig(GrpoEvalConfig):
    """Greedy completions of data.dev's prompts (reward model score, verifier accuracy) and the
    pre-training loss on ptx.data's validation blocks, before training, every `every` steps and at the end."""

    ptx_batches: Annotated[int, Range(ge=1)] = 20  # validation blocks' batches of ptx.batch_size


@dataclass
class PpoConfig:
    name: str = "ppo"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # the SFT causal LM: actor and reference
    reward_model: str | None = None  # plm reward's checkpoint (a RewardModel): frozen; the critic's init
    critic_from: str | None = None  # another RewardModel checkpoint to start the critic from
    model: ModelSection = field(default_factory=ModelSection)  # unused by PPO (the SFT model is given)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # default: init_from's
    chat_template: str | None = None  # as plm grpo: null = the tokenizer's own (SFT's) or the raw text
    peft: dict[str, Any] = field(default_factory=dict)  # lora / adapter: actor and critic on one shared base
    data: GrpoDataConfig = field(default_factory=GrpoDataConfig)
    samples_per_prompt: Annotated[int, Range(ge=1)] = 1
    generation: GenerationSection = field(default_factory=lambda: GenerationSection(max_new_tokens=32))
    ppo: PpoSection = field(default_factory=PpoSection)
    ptx: PtxSection = field(default_factory=PtxSection)
    ema: EmaSection = field(default_factory=EmaSection)
    verifier: list[RewardSpec] = field(default_factory=list)  # optional: accuracy of the completions
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.0))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="constant", warmup_steps=0, min_lr_ratio=1.0)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, batch_size=16, clip_grad=1.0))
    eval: PpoEvalConfig = field(default_factory=PpoEvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=50))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=1))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
