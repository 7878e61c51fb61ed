"""Every task `plm finetune` and `plm evaluate` know, by name: the fine-tuning tasks of plmkit.evaluate.tasks
and the prompting paradigms of plmkit.prompting (PET trains the masked LM through its patterns and
verbalizer, and pet_distill distils the pattern models' ensemble into a classifier; in-context learning and
chain of thought evaluate a model as it is). The registry lives here, above both layers, so neither imports the other.

    task = build_task(config.task, tokenizer, labels, model=model, data=config.data)

A prompting task reads its own settings from `task.options` (PetConfig / IclConfig / CotConfig fields; ICL also
`train`: the file its demonstrations come from, and `encoder`: a sentence encoder folder for kNN).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from plmkit.config import from_dict
from plmkit.data.tasks import TaskDataConfig, read_split
from plmkit.errors import ConfigError, did_you_mean
from plmkit.evaluate.tasks.config import TASK_NAMES, TaskConfig

# name -> "module:callable(config, tokenizer, labels)" for the fine-tuning tasks
FINETUNE_TASKS: dict[str, str] = {
    "classification": "plmkit.evaluate.tasks.classification:Classification",
    "token_classification": "plmkit.evaluate.tasks.token_classification:TokenClassification",
    "extractive_qa": "plmkit.evaluate.tasks.extractive_qa:ExtractiveQA",
    "seq2seq": "plmkit.evaluate.tasks.seq2seq:Seq2Seq",
    "spelling_correction": "plmkit.evaluate.tasks.spelling:spelling_task",
}
# pattern-verbalizer training of the masked LM itself; the distillation of the pattern models' ensemble
PROMPTING_TRAINABLE = ("pet", "pet_distill")
EVALUATION_ONLY = ("icl", "cot")  # prompting paradigms without training
TRAINING_ONLY = ("pet_distill",)  # its model is a classifier: plm evaluate --task classification
UNLABELLED_TASKS = ("pet", "pet_distill")  # read data.unlabelled (PET's auxiliary MLM; the distillation set)
NEEDS_UNLABELLED = ("pet_distill",)
PROMPTING_TASKS = (*PROMPTING_TRAINABLE, *EVALUATION_ONLY)
TASKS = (*FINETUNE_TASKS, *PROMPTING_TASKS)
assert set(TASKS) <= set(TASK_NAMES)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def check_task_name(name: str, training: bool) -> None:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; known: {', '.join(TASKS)}")
    if training and name in EVALUATION_ONLY:
        raise ConfigError(
            f"task.name={name} evaluates a language model as it is (no training); use plm evaluate CKPT "
            f"--task {name}, or a fine-tuning task ({', '.join(FINETUNE_TASKS)})"
        )
    if not training and name in TRAINING_ONLY:
        raise ConfigError(
            f"task {name} trains a sequence classifier; evaluate the distilled checkpoint with "
            "--task classification"
        )


def build_task(
    config: TaskConfig,
    tokenizer: Any,
    labels: Any = None,
    *,
    model: Any = None,
    data: TaskDataConfig | None = None,
) -> Any:
    """The task of `config.name`; prompting tasks take their settings from `config.options`."""
    check_task_name(config.name, training=config.name in TRAINING_ONLY)
    if config.name in FINETUNE_TASKS:
        if config.options:
            raise ConfigError(
                f"task.options is for the prompting tasks ({', '.join(PROMPTING_TASKS)}); remove it"
            )
        return _load(FINETUNE_TASKS[config.name])(config, tokenizer, labels)
    if config.name == "pet":
        from plmkit.prompting.pet_task import PetConfig, PetTask

        options = {"max_length": config.max_length, "batch_size": config.batch_size, **config.options}
        return PetTask(from_dict(PetConfig, options, path="task.options"), tokenizer, labels)
    if config.name == "pet_distill":
        from plmkit.prompting.pet_distill import PetDistill

        return PetDistill(config, tokenizer, labels)
    if config.name == "cot":
        from plmkit.prompting.cot_task import CotConfig, CotTask

        options = {"batch_size": config.batch_size, **config.options}
        return CotTask(from_dict(CotConfig, options, path="task.options"), tokenizer)
    return _icl_task(config, tokenizer, model, data or TaskDataConfig())


def _icl_task(config: TaskConfig, tokenizer: Any, model: Any, data: TaskDataConfig) -> Any:
    from plmkit.prompting.icl import IclConfig
    from plmkit.prompting.icl_task import IclTask

    options = dict(config.options)
    train, encoder_path = options.pop("train", None), options.pop("encoder", None)
    if not train:
        raise ConfigError(
            "task icl takes its demonstrations from a train split: set task.options.train=FILE "
            "(read with the same data.columns)"
        )
    icl = from_dict(IclConfig, options, path="task.options")
    mapping = {k: getattr(data, k) for k in ("format", "columns", "on_error", "drop_labels")}
    split = read_split(
        TaskDataConfig(train=str(train), **mapping), "train", ("text", "label"), ("id",), ("text",)
    )
    encoder = None
    if encoder_path:
        from plmkit.io import load

        encoder = load(Path(encoder_path))
    family = getattr(getattr(model, "config", None), "family", "causal")
    return IclTask(icl, tokenizer, split, family=family, config=config, encoder=encoder)
