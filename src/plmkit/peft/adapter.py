"""Bottleneck adapters: h + up(act(down(h))) on a sublayer's output, before the residual connection.

  houlsby  (Houlsby et al. 2019): after the attention output projection (self- and, in a decoder,
           cross-attention) and after the MLP output projection of every block;
  pfeiffer (Pfeiffer et al. 2020): after the MLP output projection only.

The adapter wraps the sublayer's output Linear (`attn.out`, `cross_attn.out`, `mlp.fc_out`), so the
model code is unchanged. `up` starts at zero: at initialisation every adapter is the identity and the
model computes exactly what the base computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.model.config import ACTIVATIONS
from plmkit.model.layers import activation_fn
from plmkit.peft.base import LinearWrapper, is_linear, set_submodule
from plmkit.peft.disable import adapters_active

KINDS = {"houlsby": ("attn.out", "cross_attn.out", "mlp.fc_out"), "pfeiffer": ("mlp.fc_out",)}


@dataclass(frozen=True)
class AdapterOptions:
    kind: str = "houlsby"  # houlsby | pfeiffer
    # bottleneck width
    size: Annotated[int, Range(ge=1, off="null", means="d_model // reduction")] | None = None
    reduction: Annotated[int, Range(ge=1)] = 16
    # gelu, not relu: with `up` at zero a relu whose inputs all start negative passes no gradient, ever
    activation: str = "gelu"  # gelu | gelu_tanh | relu | silu

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"adapter kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            raise ConfigError(f"adapter size must be a positive integer, got {self.size!r}")
        if not isinstance(self.reduction, int) or self.reduction <= 0:
            raise ConfigError(f"adapter reduction must be a positive integer, got {self.reduction!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"adapter activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )


class Bottleneck(nn.Module):
    """(…, C) -> (…, C): up(act(down(h))); with up = 0 the adapter adds nothing."""

    def __init__(self, dim: int, size: int, activation: str, like: torch.Tensor) -> None:
        super().__init__()
        factory = dict(device=like.device, dtype=like.dtype)
        self.down = nn.Linear(dim, size, **factory)
        self.up = nn.Linear(size, dim, **factory)
        self.act = activation_fn(activation)
        nn.init.normal_(self.down.weight, std=1e-2)  # near zero, as in Houlsby et al.
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class AdapterLinear(LinearWrapper):
    """The wrapped Linear's output h becomes h + adapter(h)."""

    peft_children = ("adapter",)

    def __init__(self, base: nn.Module, size: int, activation: str) -> None:
        super().__init__(base)
        self.adapter = Bottleneck(self.out_features, size, activation, self.float_like())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_forward(x)
        return h + self.adapter(h) if adapters_active() else h  # adapters_off(): the frozen base alone


def apply_adapters(model: nn.Module, options: AdapterOptions) -> list[str]:
    options.validate()
    suffixes = KINDS[options.kind]
    names = [
        n for n, m in model.named_modules() if is_linear(m) and ".blocks." in f".{n}" and n.endswith(suffixes)
    ]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no {' / '.join(suffixes)} layers for adapters")
    for name in names:
        linear = model.get_submodule(name)
        size = options.size or max(1, linear.out_features // options.reduction)
        set_submodule(model, name, AdapterLinear(linear, size, options.activation))
    return names
