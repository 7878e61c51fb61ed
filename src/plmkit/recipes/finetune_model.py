"""The fine-tuning recipe's tokenizer and model: the base (a plmkit or Hugging Face checkpoint, or a preset
initialised at random) and the task head put on its stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.evaluate.tasks.base import Task
from plmkit.model import ModelConfig, get_preset
from plmkit.model.registry import FAMILY_MODELS, model_class_name
from plmkit.recipes.finetune_config import FinetuneConfig
from plmkit.recipes.inputs import check_init_from, load_init_from, load_tokenizer_folder


def finetune_tokenizer(config: FinetuneConfig, resume_from: Path | None = None) -> Any:
    """tokenizer.path, else the base checkpoint's own, else (a resume) the checkpoint's."""
    if config.tokenizer.path:
        return load_tokenizer_folder(Path(config.tokenizer.path))
    if config.init_from:
        check_init_from(config)
        return load_tokenizer_folder(Path(config.init_from))
    if resume_from is not None:
        return load_tokenizer_folder(resume_from)
    raise ConfigError("no tokenizer: set tokenizer.path= or init_from=")


def build_base_model(config: FinetuneConfig, tokenizer: Any) -> tuple[torch.nn.Module, str]:
    """(the base model in train mode, where it came from): init_from's checkpoint, or model.preset with
    the recipe's fields at random initialisation (the vocabulary and special ids are the tokenizer's)."""
    if config.init_from:
        model = load_init_from(config)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(
                f"init_from {config.init_from} has vocab_size {model.config.vocab_size} but the tokenizer has "
                f"{tokenizer.vocab_size}; use the checkpoint's own tokenizer (leave tokenizer.path empty)"
            )
        return model.train(), config.init_from
    fields = config.model.overrides()
    fields["vocab_size"] = fields.get("vocab_size", tokenizer.vocab_size)
    for role in ("pad", "bos", "eos"):
        fields.setdefault(f"{role}_token_id", getattr(tokenizer, f"{role}_id"))
    base = get_preset(config.model.preset)
    fields.setdefault("max_positions", max(base.max_positions, config.task.max_length))
    model_config: ModelConfig = base.replace(**fields)
    return FAMILY_MODELS[model_config.family](model_config).train(), f"model.preset={config.model.preset}"


def check_max_length(task: Task, model: torch.nn.Module, source: str) -> None:
    """task.max_length fits the model's positions (ConfigError before any training or evaluation)."""
    limit = getattr(getattr(model, "config", None), "max_positions", None)
    wanted = getattr(task.config, "max_length", None)  # generation tasks (cot) bound their own lengths
    if limit is not None and wanted is not None and wanted > limit:
        raise ConfigError(
            f"task.max_length={task.config.max_length} is longer than {source} can read "
            f"(max_positions={limit}); set task.max_length={limit} or less"
        )


def task_model(task: Task, base: torch.nn.Module, source: str) -> torch.nn.Module:
    """The model the task trains: `base` itself when it already is that head with the same labels
    (fine-tuning on), else a new head on base's stack."""
    check_max_length(task, base, source)
    if model_class_name(base) == task.head:
        names = getattr(base, "labels", None)
        wanted = list(task.labels.names) if task.labels is not None else None
        if names is None or wanted is None or names == wanted:
            return base
    return task.new_head(base, source)
