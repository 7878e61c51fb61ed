"""The PEFT methods by name: `apply` (one entry point for every method), `apply_spec` (a recipe's peft
section), `merge` / `unmerge`, and each method's option dataclass (METHOD_OPTIONS)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError, did_you_mean
from plmkit.peft import lora as _lora
from plmkit.peft.adapter import AdapterOptions, apply_adapters
from plmkit.peft.base import (
    PeftConfig,
    base_model,
    default_train_head,
    get_config,
    mark_only_peft_trainable,
    require_config,
)
from plmkit.peft.bitfit import BitFitOptions, check_bitfit
from plmkit.peft.lora import LoraOptions
from plmkit.peft.prefix import PrefixOptions, apply_prefix
from plmkit.peft.prompt import PromptOptions, apply_prompt
from plmkit.peft.qlora import merge_quantized

METHODS = ("lora", "adapter", "bitfit", "prompt", "prefix")
# each method's options (train_head aside, which every method takes): a recipe's peft section is checked
# against these before anything is built (plmkit.recipes.validate)
METHOD_OPTIONS: dict[str, type] = {
    "lora": LoraOptions,
    "adapter": AdapterOptions,
    "bitfit": BitFitOptions,
    "prompt": PromptOptions,
    "prefix": PrefixOptions,
}
_PROMPT_OPTIONS = ("n_tokens", "init_text", "init_ids")
_PTUNING_V2 = ("ptuning_v2", "p_tuning_v2", "ptuningv2", "ptuning", "p_tuning", "deep_prompt")


def _options(method: str, cls: type | None, names: tuple[str, ...], options: dict[str, Any]):
    valid = [f.name for f in dataclasses.fields(cls)] if cls is not None else list(names)
    for key in options:
        if key not in valid:
            raise ConfigError(
                f"unknown {method} option {key!r}{did_you_mean(key, valid)}; "
                f"options: {', '.join([*valid, 'train_head'])}"
            )
    return cls(**options) if cls is not None else options


def apply(model: nn.Module, method: str = "lora", **options: Any) -> nn.Module:
    """Add the PEFT method to `model`, freeze everything else, and return the model to train."""
    if get_config(model) is not None:
        raise ConfigError(
            f"this model already carries {get_config(model).method}; apply one PEFT method "
            "to a plain base model"
        )
    if not hasattr(model, "config"):
        raise ConfigError(f"plmkit.peft.apply needs a plmkit model, got {type(model).__name__}")
    training = model.training
    train_head = options.pop("train_head", None)
    train_head = default_train_head(model) if train_head is None else bool(train_head)
    if method == "lora":
        lora_options = _options(method, LoraOptions, (), options)
        _lora.apply_lora(model, lora_options)
        record = dataclasses.asdict(lora_options)
    elif method == "adapter":
        adapter_options = _options(method, AdapterOptions, (), options)
        apply_adapters(model, adapter_options)
        record = dataclasses.asdict(adapter_options)
    elif method == "bitfit":
        _options(method, None, (), options)
        check_bitfit(model, train_head)
        record = {}
    elif method == "prompt":
        tokenizer = options.pop("tokenizer", None)
        record = _options(method, None, _PROMPT_OPTIONS, options)
        model = apply_prompt(model, tokenizer=tokenizer, **record)
        record = {"n_tokens": model.n_tokens, **record}
    elif method == "prefix":
        tokenizer = options.pop("tokenizer", None)
        prefix_options = _options(method, PrefixOptions, (), options)
        apply_prefix(model, prefix_options, tokenizer)
        record = dataclasses.asdict(prefix_options)
    elif method.lower().replace("-", "_") in _PTUNING_V2:
        raise ConfigError(
            f"P-tuning v2 (deep prompt tuning) is method 'prefix' with projection=False, "
            f"not {method!r}: apply(model, 'prefix', projection=False, n_tokens=...)"
        )
    else:
        raise ConfigError(
            f"unknown PEFT method {method!r}{did_you_mean(method, METHODS)}; methods: {', '.join(METHODS)}"
        )
    record["train_head"] = train_head
    model.peft_config = PeftConfig(method, record)
    model.train(training)  # new modules start in training mode: give them the model's (eval: no dropout)
    return mark_only_peft_trainable(model)


def apply_spec(
    model: nn.Module, spec: dict[str, Any] | None, tokenizer: Any = None, where: str = "peft"
) -> nn.Module:
    """`apply` from a recipe section such as {method: lora, r: 8, target: all-linear}; an empty or
    missing section returns the model unchanged. The tokenizer serves prompt/prefix `init_text`."""
    if not spec:
        return model
    if not isinstance(spec, dict) or "method" not in spec:
        raise ConfigError(
            f"{where} must be a mapping with a method, e.g. {{method: lora, r: 8}}; got {spec!r}"
        )
    options = {k: v for k, v in spec.items() if k != "method"}
    if spec["method"] in ("prompt", "prefix"):
        options["tokenizer"] = tokenizer
    try:
        return apply(model, spec["method"], **options)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def merge(
    model: nn.Module,
    unload: bool = False,
    *,
    probe: torch.Tensor | None = None,
    max_logits_error: float | None = None,
) -> nn.Module:
    """Fold every LoRA update into its base weight (W += s·BA): same outputs, no extra cost per token.
    With `unload`, also drop the LoRA modules and return a plain plmkit model (what `plm merge-lora`
    saves); every parameter is trainable again.

    On a quantized base (QLoRA) the merged weight is quantized again, which changes the outputs a little:
    the largest logits change on `probe` (token ids; default a seeded random batch) is reported as a
    warning and as `model.merge_report`, and above `max_logits_error` the merge is refused (see qlora.py).
    Such a base stays frozen after unloading."""
    config = require_config(model, "merge")
    if config.method != "lora":
        raise ConfigError(
            f"only LoRA can be merged into the base weights; {config.method} adds layers or "
            "inputs that have no place in them"
        )
    base = base_model(model)
    quantization = getattr(base, "quant_config", None)
    modules = [module for _, module in _lora.lora_modules(model)]
    if quantization is not None:
        model.merge_report = merge_quantized(model, base, modules, quantization.mode, probe, max_logits_error)
    else:
        for module in modules:
            module.merge()
    if unload:
        _lora.unload(model)
        del model.peft_config
        for param in model.parameters():
            param.requires_grad_(quantization is None)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo `merge` (W -= s·BA): the base weights come back (to float rounding) and LoRA trains again."""
    config = require_config(model, "unmerge")
    if config.method != "lora":
        raise ConfigError(f"only LoRA can be unmerged; this model carries {config.method}")
    for _, module in _lora.lora_modules(model):
        module.unmerge()
    return model
