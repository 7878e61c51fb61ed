"""AdamW (or 8-bit AdamW) with the usual parameter groups, and learning-rate schedules with warmup."""

from __future__ import annotations

import math

import torch
from torch import nn

from plmkit.errors import ConfigError, did_you_mean
from plmkit.train.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Weight matrices decay; biases, norm weights and (unless asked) embeddings do not."""
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # tied parameters are listed once
        if not param.requires_grad:
            continue
        is_embedding = id(param) in embedding_params
        if param.dim() >= 2 and (decay_embeddings or not is_embedding):
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


OPTIMIZERS = ("adamw", "adamw8bit")


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    from plmkit.quant import check_trainable

    check_trainable(model)  # a quantized model's integer weights cannot train (QLoRA: LoRA on top)
    if config.name not in OPTIMIZERS:
        raise ConfigError(
            f"optim.name={config.name!r} is not one of {', '.join(OPTIMIZERS)}"
            f"{did_you_mean(config.name, OPTIMIZERS)}"
        )
    groups = parameter_groups(model, config.weight_decay, config.decay_embeddings)
    if config.name == "adamw8bit":
        return adamw8bit(groups, config)
    fused = config.fused
    if fused is None:  # fused kernels: one launch per step instead of one per tensor
        fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)


def adamw8bit(groups: list[dict], config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW whose two moments are stored in 8 bits, block-wise quantized (Dettmers et al. 2022): the
    optimizer state shrinks ~4x. bitsandbytes rather than torchao: its state dict is plain uint8 / float
    tensors, so training checkpoints load with torch.load(weights_only=True) and resume exactly, and it
    needs no torch.compile (torchao's AdamW8bit compiles its step: slow first step, noisy logs). Tensors
    under 4096 elements (biases, norms) keep 32-bit states, as bitsandbytes does by default."""
    from plmkit.quant.bnb import require

    bitsandbytes = require("optim.name=adamw8bit", "use optim.name=adamw")
    return bitsandbytes.optim.AdamW8bit(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


SCHEDULES = ("linear", "cosine", "constant", "wsd")


def lr_multiplier(step: int, total_steps: int, config: ScheduleConfig) -> float:
    """Factor applied to the base lr at optimizer step `step` (0-based): linear warmup to 1, then
    linear / cosine decay to min_lr_ratio, constant, or warmup-stable-decay (flat, then a linear
    decay over the last decay_fraction of the run)."""
    if config.kind not in SCHEDULES:
        raise ConfigError(
            f"schedule.kind={config.kind!r} is not one of {', '.join(SCHEDULES)}{did_you_mean(config.kind, SCHEDULES)}"
        )
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if config.kind == "constant":
        return 1.0
    floor = config.min_lr_ratio
    if config.kind == "wsd":
        decay_steps = max(1, int(total_steps * config.decay_fraction))
        decay_start = total_steps - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / decay_steps)
        return 1.0 - (1.0 - floor) * progress
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if config.kind == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_multiplier(0, total_steps, config)  # validates the kind before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, config))
