"""Dropout that a caller can switch off for its own calls without touching the model.

Generation must not change the model it reads (a server's threads and PPO rollouts share it with
training), so it cannot call `model.eval()` and back. Instead it runs its forward calls inside
`dropout_off()`: a context variable, private to the calling thread (or asyncio task), that every
plmkit dropout consults. The model's `training` flag, modules and parameters stay as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

_DROPOUT_OFF: ContextVar[bool] = ContextVar("plmkit_dropout_off", default=False)


@contextlib.contextmanager
def dropout_off() -> Iterator[None]:
    """No dropout in the model calls made inside this block, by this thread or task only."""
    token = _DROPOUT_OFF.set(True)
    try:
        yield
    finally:
        _DROPOUT_OFF.reset(token)


def dropout_active(training: bool) -> bool:
    """Whether a module in `training` mode drops out now. A compiled graph keeps its training
    behaviour (generation never runs through torch.compile), so the graph has no context look-up."""
    if not training:
        return False
    return torch.compiler.is_compiling() or not _DROPOUT_OFF.get()


class Dropout(nn.Dropout):
    """nn.Dropout that also obeys `dropout_off()`; same state (none) and the same output otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, dropout_active(self.training), self.inplace)


def set_dropout_rates(
    model: nn.Module, dropout: float | None = None, attention_dropout: float | None = None
) -> None:
    """Change a built model's rates in place, its config included (a task head built on it later reads
    them there): `dropout` for every plmkit Dropout (embeddings, residual branches), `attention_dropout`
    for the attention weights (modules with a `dropout_p`). None keeps a rate."""
    config = getattr(model, "config", None)
    for module in model.modules():
        if dropout is not None and isinstance(module, Dropout):
            module.p = dropout
        if attention_dropout is not None and hasattr(module, "dropout_p"):
            module.dropout_p = attention_dropout
    if config is not None:
        if dropout is not None:
            config.dropout = dropout
        if attention_dropout is not None:
            config.attention_dropout = attention_dropout
