"""What `plm reward` and `plm dpo` share: the checks before anything is written, precision, how texts are
encoded for the model (chat template or HH transcript, causal or encoder), the steps of a run."""

from __future__ import annotations

import math
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.prompting.chat import ChatTemplate
from plmkit.recipes.preference_data import Encoding
from plmkit.recipes.sft_inputs import resolve_chat_template
from plmkit.recipes.validate import check_peft_section
from plmkit.train.distributed.base import Strategy
from plmkit.train.precision import Precision, resolve_precision

UNSUPPORTED_PEFT = ("prompt", "prefix")  # virtual tokens shift the positions a score or a label is read at


def validate_preference_recipe(config: Any, recipe: str) -> None:
    """ConfigError for what would fail once the run is under way (the data is read when the run builds)."""
    check_peft_section(config.peft)
    method = config.peft.get("method")
    if method in UNSUPPORTED_PEFT:
        raise ConfigError(
            f"peft.method={method}: {recipe} reads scores and log-probs at the rows' own positions, which "
            "virtual tokens would shift; use lora, adapter or bitfit"
        )
    if not config.data.train:
        raise ConfigError(
            "the recipe has no data.train; set data.train=FILE (and data.dev=FILE for held-out pairs)"
        )
    if not config.init_from and not config.model.preset:
        raise ConfigError(
            "the recipe names no base model; set init_from= to a plmkit or Hugging Face checkpoint, or "
            "model.preset= with tokenizer.path= to start from a random initialisation"
        )
    if not config.init_from and not config.tokenizer.path:
        raise ConfigError("model.preset without init_from needs tokenizer.path= (a tokenizer folder)")
    if config.distributed.tensor_parallel != 1:
        raise ConfigError(
            f"distributed.tensor_parallel={config.distributed.tensor_parallel}: {recipe} runs data parallel "
            "only (ddp, fsdp, deepspeed); set distributed.tensor_parallel=1"
        )
    role_map = config.data.format_options.get("role_map")
    if role_map is not None and not (
        isinstance(role_map, dict) and all(isinstance(v, str) for v in role_map.values())
    ):
        raise ConfigError(
            'data.format_options.role_map must map speakers to roles, e.g. {"bot": "assistant"}'
        )
    if config.chat_template is not None and not str(config.chat_template).strip():
        raise ConfigError(
            "chat_template is empty; give a built-in name (chatml, qwen, llama3, plain), Jinja source, or null"
        )


def run_precision(config: Any, strategy: Strategy) -> Precision:
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)
    if not strategy.uses_grad_scaler():  # DeepSpeed scales fp16 losses in its engine
        precision.scaler = torch.amp.GradScaler(device.type, enabled=False)
    return precision


def preference_encoding(config: Any, tokenizer: Any, causal: bool) -> Encoding:
    """A causal model's conversations go through the recipe's chat template (as plm sft picks it); an
    encoder's through the template only when the recipe names one, else as HH transcripts."""
    if causal:
        template: ChatTemplate | None = resolve_chat_template(config.chat_template, tokenizer)
    else:
        template = ChatTemplate.resolve(str(config.chat_template)) if config.chat_template else None
    return Encoding(tokenizer, template, causal)


def template_name(encoding: Encoding) -> str | None:
    """How conversations were written: the template's name ("custom" for Jinja source), or None (HH
    transcripts)."""
    if encoding.template is None:
        return None
    return encoding.template.name or "custom"


def planned_steps(config: Any, n_items: int, data_parallel: int) -> int:
    """train.steps, or with `epochs`: ceil(epochs x items / (batch_size x accumulation x processes))."""
    if config.epochs is None:
        return config.train.steps
    per_step = config.train.batch_size * config.train.accumulation * data_parallel
    return max(1, math.ceil(config.epochs * n_items / per_step))


def pad_id(tokenizer: Any) -> int:
    """Padding's id: pad, else eos, else 0 (padded positions are masked out whatever their id)."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id):
        if candidate is not None:
            return candidate
    return 0
