"""Fine-tuning tasks: features, loss and metrics per task (see base.py), and their evaluation (run.py).

task = build_task(TaskConfig(name="classification"), tokenizer, labels)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from plmkit.errors import ConfigError, did_you_mean
from plmkit.evaluate.tasks.config import TASK_NAMES, TaskConfig

# name -> "module:Class", imported when used
TASKS: dict[str, str] = {
    "classification": "plmkit.evaluate.tasks.classification:Classification",
    "token_classification": "plmkit.evaluate.tasks.token_classification:TokenClassification",
    "extractive_qa": "plmkit.evaluate.tasks.extractive_qa:ExtractiveQA",
    "seq2seq": "plmkit.evaluate.tasks.seq2seq:Seq2Seq",
    "spelling_correction": "plmkit.evaluate.tasks.spelling:spelling_task",
}
assert tuple(TASKS) == TASK_NAMES


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{did_you_mean(name, TASKS)}; known: {', '.join(TASKS)}")
    module, _, attr = TASKS[name].partition(":")
    return getattr(import_module(module), attr)


def build_task(config: TaskConfig, tokenizer: Any, labels: Any = None) -> Any:
    return task_class(config.name)(config, tokenizer, labels)


__all__ = ["TASKS", "TaskConfig", "build_task", "task_class"]
