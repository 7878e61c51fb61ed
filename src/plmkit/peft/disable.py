"""The base model under its PEFT modules, without touching the model: `adapters_off()`.

DPO's and PPO's reference under LoRA is the policy with its adapters switched off (one model in memory,
as trl's `disable_adapter()`). Switching them off by writing to the modules would change a model that a
training step or another thread may be using, so, like `plmkit.model.dropout.dropout_off`, the switch is
a context variable private to the calling thread (or asyncio task): every LoRA and bottleneck-adapter
module consults it, and adds nothing while it is set.

    with adapters_off(model), torch.no_grad():
        reference_logits = model(input_ids).logits   # exactly the frozen base's output
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

from plmkit.errors import ConfigError

_ADAPTERS_OFF: ContextVar[bool] = ContextVar("plmkit_adapters_off", default=False)
SWITCHABLE = ("lora", "adapter")  # methods whose modules add to a frozen base's output


def adapters_active() -> bool:
    """Whether LoRA / adapter modules add their update in this thread now (a compiled graph always does)."""
    return torch.compiler.is_compiling() or not _ADAPTERS_OFF.get()


@contextlib.contextmanager
def adapters_off(model: nn.Module | None = None) -> Iterator[None]:
    """Model calls made inside this block, by this thread or task only, run without LoRA updates and
    bottleneck adapters: the frozen base's output. Given `model`, checks first that switching off gives
    the base: a PEFT model of a switchable method (lora, adapter) whose LoRA is not merged into its weights."""
    if model is not None:
        check_switchable(model)
    token = _ADAPTERS_OFF.set(True)
    try:
        yield
    finally:
        _ADAPTERS_OFF.reset(token)


def check_switchable(model: nn.Module) -> None:
    """ConfigError unless `adapters_off` turns `model` into its frozen base."""
    config = getattr(model, "peft_config", None)
    if config is None:
        raise ConfigError(
            "the model carries no PEFT method, so switching adapters off leaves the trained model itself; "
            "use a frozen copy as the reference instead"
        )
    if config.method not in SWITCHABLE:
        raise ConfigError(
            f"peft.method={config.method}: its base cannot be recovered by switching modules off (only "
            f"{' and '.join(SWITCHABLE)} can); use a frozen copy of the initial model as the reference"
        )
    if any(getattr(m, "merged", False) for m in model.modules()):
        raise ConfigError(
            "the model's LoRA is merged into its weights, so switching it off does not give the base; "
            "unmerge it first (plmkit.peft.unmerge)"
        )
