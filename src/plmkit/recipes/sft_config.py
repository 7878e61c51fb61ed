"""The supervised fine-tuning recipe: one YAML file names the causal LM, the instruction data, the chat
template and the training run.

name: alpaca-zh
init_from: runs/gpt-clm/checkpoints/step-00002000   # a plmkit or Hugging Face causal LM
chat_template: null               # a built-in (chatml, qwen, llama3, plain), Jinja source, or null (below)
data: {train: ../shared/data/alpaca_bilingual/alpaca_zh_first3k.jsonl, train_rows: "100:",
       dev: ../shared/data/alpaca_bilingual/alpaca_zh_first3k.jsonl, dev_rows: ":100",
       format: alpaca, max_length: 512}
pack: false                        # true: whole examples packed into blocks of data.max_length tokens
optim: {lr: 1.0e-4}
train: {batch_size: 16}
epochs: 2                          # or train.steps
eval: {every: 100}                 # dev loss per assistant token
peft: {method: lora, r: 8}         # optional, as in pre-training; quantize: QLoRA's frozen base

chat_template: null takes the tokenizer's own template; a tokenizer without one gets "chatml" when it has
ChatML's control tokens (<|im_start|>, <|im_end|>) as special tokens, else "plain" (Alpaca's headers in
plain text, each answer ended by the tokenizer's eos). A built-in named explicitly whose control tokens the
tokenizer lacks is a ConfigError: new control tokens would need new, untrained embedding rows (and a
frozen base under PEFT could not learn them). The template used is saved with every checkpoint's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.data.tasks.rows import TASK_FORMATS, TaskDataConfig, rows_slice
from plmkit.errors import ConfigError, did_you_mean
from plmkit.prompting.instructions import FORMATS
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

InstructionFormat = Literal["alpaca", "sharegpt", "openai", "prompt_completion", "definition"]

# The keys each instruction format reads from a row: (required, optional). Rows are read by
# plmkit.data.tasks.read_split under data.columns (format key -> the file's column).
FORMAT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "sharegpt": (("conversations",), ("system",)),
    "openai": (("messages",), ()),
    "prompt_completion": (("prompt", "completion"), ()),
    "definition": (("definition", "input", "output"), ("positive_examples", "negative_examples")),
}


@dataclass
class SftDataConfig:
    """The `data` section: instruction rows in one of the formats of plmkit.prompting.instructions."""

    train: str | None = None  # a file (.jsonl .json .csv .tsv .parquet, each also .gz) or a datasets folder
    dev: str | None = None  # held-out conversations: the dev loss per assistant token
    format: InstructionFormat = "alpaca"  # alpaca | sharegpt | openai | prompt_completion | definition
    format_options: dict[str, Any] = field(
        default_factory=dict
    )  # sharegpt: role_map, response; definition: n_positive, n_negative, explanations
    file_format: Literal[TASK_FORMATS] = "auto"  # how the file is stored (auto: from its suffix)
    columns: dict[str, str] = field(default_factory=dict)  # the format's key -> the file's column
    on_error: Literal["raise", "skip"] = "raise"  # skip: bad rows are counted and reported
    train_rows: str | None = None  # "START:END", a python slice of the rows read
    dev_rows: str | None = None
    max_length: Annotated[int, Range(ge=2)] = 1024  # tokens per conversation (cut from the right)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(
                f"data.format: unknown instruction format {self.format!r}"
                f"{did_you_mean(str(self.format), FORMATS)}; known: {', '.join(FORMATS)}"
            )
        for split in ("train", "dev"):
            rows_slice(getattr(self, f"{split}_rows"), f"data.{split}_rows")

    def columns_read(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) keys of a row in this format (sharegpt's `response` option adds one)."""
        required, optional = FORMAT_COLUMNS[self.format]
        response = self.format_options.get("response") if self.format == "sharegpt" else None
        return (required + (str(response),) if response else required), optional

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
class SftConfig:
    name: str = "sft"
    out_dir: str = "runs/{name}"
    seed: Annotated[int, Range(ge=0)] = 0
    init_from: str | None = None  # a plmkit or Hugging Face causal LM; else model.preset from scratch
    model: ModelSection = field(
        default_factory=ModelSection
    )  # random init (with tokenizer.path); init_from: its dropout rates only
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # path; default: init_from's
    chat_template: str | None = None  # a built-in name, Jinja source, or null (see the module docstring)
    peft: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    data: SftDataConfig = field(default_factory=SftDataConfig)
    pack: bool = False  # whole examples packed into blocks of data.max_length (per-document positions)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(kind="cosine", warmup_steps=0, min_lr_ratio=0.1)
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    epochs: Annotated[float, Range(gt=0, off="null", means="train.steps decides")] | None = (
        None  # when set: train.steps = ceil(epochs x train items / (batch_size x accumulation x processes))
    )
    eval: EvalConfig = field(default_factory=EvalConfig)  # every: steps between dev losses; batches: cap
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    resume: bool | str = False
    overwrite: bool = False

    @property
    def run_dir(self) -> str:
        return self.out_dir.format(name=self.name)
