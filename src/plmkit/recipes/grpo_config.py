"""The GRPO recipe: one YAML file names the causal LM policy, the prompts, the reward functions and the run.

name: grpo-gsm8k
init_from: runs/sft/checkpoints/step-00000500   # a plmkit or Hugging Face causal LM (or model.preset)
chat_template: null            # null: the prompt text as it is; a built-in / Jinja: the prompt as a user turn
data: {train: ../shared/data/gsm8k/train_first2000.jsonl, format: gsm8k,
       prompt_template: "Question: {question}\\nAnswer:", max_prompt_length: 256}
num_generations: 8             # completions per prompt (a group); >= 2
generation: {max_new_tokens: 64, temperature: 1.0}
grpo: {loss_type: dapo, beta: 0.0, epsilon_low: 0.2, epsilon_high: 0.28, scale_rewards: group,
       num_iterations: 1}
rewards:
  - {function: gsm8k_flexible, weight: 1.0}          # a built-in verifier
  - {function: my_rewards:format_reward, weight: 0.2}  # "module:function", trl's signature
train: {steps: 200, batch_size: 16, accumulation: 1}  # completions per micro-batch

One step samples a generation batch of train.batch_size x train.accumulation completions (x processes):
that many / num_generations prompts, num_generations completions each, scored by every reward function;
the advantages are computed per group; then the batch trains grpo.num_iterations optimizer steps, each
over all of its micro-batches (the log-probs of the sampling policy are the "old" ones of the ratio).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from plmkit.config.fields import Range
from plmkit.data.tasks.rows import TASK_FORMATS, TaskDataConfig, rows_slice
from plmkit.recipes.config import ModelSection, TokenizerConfig
from plmkit.train.config import (
    CheckpointConfig,
    DistributedConfig,
    LogConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

PromptFormat = Literal["gsm8k", "prompt"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]

# The columns each prompt format reads from a row: (required, optional); every other column the file has
# is passed to the reward functions too. gsm8k: the gold number is the answer's "#### N".
FORMAT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gsm8k": (("question", "answer"), ()),
    "prompt": (("prompt",), ("answer",)),
}
DEFAULT_TEMPLATE = {"gsm8k": "Question: {question}\nAnswer:", "prompt": "{prompt}"}


@dataclass
class GrpoDataConfig:
    """The `data` section: prompt rows (train; dev for the greedy reward before / during / after training)."""

    train: str | None = None  # a file (.jsonl .json .csv .tsv .parquet, each also .gz) or a datasets folder
    dev: str | None = None  # held-out prompts: the mean reward of greedy completions
    format: PromptFormat = "prompt"  # gsm8k: question / answer ("#### N"); prompt: prompt (+ answer)
    prompt_template: str | None = None  # a str.format over the row's columns; default per format
    file_format: Literal[TASK_FORMATS] = "auto"  # how the file is stored (auto: from its suffix)
    columns: dict[str, str] = field(default_factory=dict)  # the format's key -> the file's column
    on_error: Literal["raise", "skip"] = "raise"  # skip: bad rows (and too long prompts) are counted
    train_rows: str | None = None  # "START:END", a python slice of the rows read
    dev_rows: str | None = None
    max_prompt_length: Annotated[int, Range(ge=1)] = 256  # tokens; a longer prompt is a DataError

    def __post_init__(self) -> None:
        for split in ("train", "dev"):
            rows_slice(getattr(self, f"{split}_rows"), f"data.{split}_rows")

    @property
    def template(self) -> str:
        return self.prompt_template if self.prompt_template is not None else DEFAULT_TEMPLATE[self.format]

    def task_data(self) -> TaskDataConfig:
        """The rows' reader settings (plmkit.data.tasks.read_split)."""
        return TaskDataConfig(
            train=self.train,
            dev=self.dev,
            format=self.file_format,
            columns=dict(self.columns),
            on_error=self.on_error,
            train_rows=self.train_rows,
            dev_rows=self.dev_rows,
        )


@dataclass
class GenerationSection:
    """How completions are sampled (plmkit.generation); the dev evaluation decodes greedily."""

    max_new_tokens: Annotated[int, Range(ge=1)] = 64  # the longest completion (trl: max_completion_length)
    temperature: Annotated[float, Range(gt=0)] = 1.0
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Range(ge=0, off="0", means="all tokens")] = 0


@dataclass
class GrpoSection:
    """The loss (plmkit.align.grpo)."""

    loss_type: LossType = "dapo"  # grpo | bnpo | dr_grpo | dapo: how token losses are averaged
    beta: Annotated[float, Range(ge=0, off="0", means="no KL term and no reference model")] = 0.0
    epsilon_low: Annotated[float, Range(ge=0, lt=1)] = 0.2  # ratio clipped below at 1 - epsilon_low
    epsilon_high: Annotated[float, Range(ge=0)] = 0.2  # ... and above at 1 + epsilon_high (DAPO: 0.28)
    scale_rewards: ScaleRewards = "group"  # advantages / group std, / batch std, or none (Dr. GRPO)
    num_iterations: Annotated[int, Range(ge=1)] = 1  # optimizer steps per generation batch (mu)


@dataclass
class RewardSpec:
    """One reward function: a built-in (gsm8k_strict, gsm8k_flexible, arithmetic) or "module:function"
    called as function(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list[float]."""

    function: str
    weight: float = 1.0
    name: str | None = None  # the name in the logs (default: the function's)


@dataclass
class GrpoEvalConfig:
    """The dev evaluation: the mean reward (per function) of greedy completions of data.dev's prompts."""

    every: Annotated[int, Range(ge=0, off="0", means="only before and after training")] = 50
    prompts: Annotated[int, Range(ge=1)] = 200  # at most this many dev prompts
    batch_size: Annotated[int, Range(ge=1)] = 32  # prompts decoded at once


@dataclass
class GrpoConfig:
    name: str = "grpo"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # a plmkit or Hugging Face causal LM; else model.preset from scratch
    model: ModelSection = field(
        default_factory=ModelSection
    )  # random init (with tokenizer.path); init_from: its dropout rates only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # path; default: init_from's
    chat_template: str | None = None  # null: prompts as plain text; else a built-in name or Jinja source
    data: GrpoDataConfig = field(default_factory=GrpoDataConfig)
    num_generations: Annotated[int, Range(ge=1)] = 8  # completions per prompt; must be >= 2
    generation: GenerationSection = field(default_factory=GenerationSection)
    grpo: GrpoSection = field(default_factory=GrpoSection)
    rewards: list[RewardSpec] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.0))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="constant", warmup_steps=0, min_lr_ratio=1.0)
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, batch_size=16))
    eval: GrpoEvalConfig = field(default_factory=lambda: GrpoEvalConfig())
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=1))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
