"""What every PEFT method shares: the record of what was applied, freezing, the task head, wrapped Linears.

A model with a PEFT method applied carries `model.peft_config` (a `PeftConfig`: the method and its
full options, JSON values only). The trainable parameters are

  * the parameters of PEFT modules (`PeftModule` subclasses say which of their children are PEFT);
  * for BitFit, every bias of the base model;
  * with `train_head`, every parameter of the task head (the freshly initialised classifier of a
    SequenceClassifier, TokenClassifier, SpanQA or RewardModel), as peft's `modules_to_save`.

Everything else is frozen (requires_grad False) and never changes during training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.quant.modules import QuantLinear
from plmkit.quant.modules import linear as quant_linear

# Top-level children that belong to the pretrained model; any other child with parameters is a task head.
BODY_CHILDREN = ("transformer", "encoder", "decoder", "lm_head")
HEAD_MODEL_CLASSES = ("SequenceClassifier", "TokenClassifier", "SpanQA", "RewardModel", "SpellingCorrector")


@dataclass
class PeftConfig:
    method: str  # lora | adapter | bitfit | prompt | prefix
    options: dict[str, Any] = field(default_factory=dict)  # every option, defaults filled in

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": dict(self.options)}


def get_config(model: nn.Module) -> PeftConfig | None:
    return getattr(model, "peft_config", None)


def require_config(model: nn.Module, action: str) -> PeftConfig:
    config = get_config(model)
    if config is None:
        raise ConfigError(
            f"cannot {action}: no PEFT method is applied to this {type(model).__name__}; "
            "call plmkit.peft.apply(model, method=...) or load_adapter first"
        )
    return config


def base_model(model: nn.Module) -> nn.Module:
    """The plmkit model inside a PEFT wrapper (prompt tuning wraps; the other methods work in place)."""
    return model.base if getattr(model, "is_peft_wrapper", False) else model


class PeftModule(nn.Module):
    """A module with PEFT parameters: the children named in `peft_children` are trained, the rest frozen."""

    peft_children: tuple[str, ...] = ()

    def peft_parameter_names(self) -> list[str]:
        names = []
        for child in self.peft_children:
            obj = getattr(self, child)
            if isinstance(obj, nn.Parameter):
                names.append(child)
            elif isinstance(obj, nn.Module):
                names += [f"{child}.{n}" for n, _ in obj.named_parameters()]
        return names


class LinearWrapper(PeftModule):
    """Replaces a linear layer in place — an nn.Linear, or a frozen int8 / NF4 QuantLinear of plmkit.quant
    (LoRA on it is QLoRA) — keeping its tensors under the same names (`weight`, `bias`, and a quantized
    layer's `weight_scale` / `weight_absmax`), so the base state dict, plmkit.io checkpoints and the
    Hugging Face export still see the original layer. The base output is `plmkit.quant.linear`, the one
    function that multiplies by every kind of weight. `to_linear()` gives the original kind of layer
    back (with the same tensor objects)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.quant = getattr(base, "quant", None)  # how a quantized base stores W; None: a float nn.Linear
        for name, tensor in base._parameters.items():  # weight (out, in) or its quantized form, scales, bias
            self.register_parameter(name, tensor)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear(self, x)

    def float_like(self) -> torch.Tensor:
        """A float tensor on the base's device in its compute dtype: new PEFT layers are made like it."""
        return self.weight if self.quant is None else getattr(self, self.quant.scale_name)

    def to_linear(self) -> nn.Module:
        if self.quant is not None:
            return QuantLinear.adopt(self)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        return linear


def is_linear(module: nn.Module) -> bool:
    """A layer LoRA and adapters can wrap: an nn.Linear or a quantized linear (plmkit.quant)."""
    return isinstance(module, (nn.Linear, QuantLinear))


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level children of a task model that are not the pretrained body: classifier, qa, value_head, ..."""
    return [
        name
        for name, child in model.named_children()
        if name not in BODY_CHILDREN and any(True for _ in child.parameters())
    ]


def default_train_head(model: nn.Module) -> bool:
    """Task models start with a random head: it must train for the method to learn anything."""
    return type(model).__name__ in HEAD_MODEL_CLASSES


def peft_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in model.named_parameters()) of the parameters the PEFT method trains."""
    config = require_config(model, "list PEFT parameters")
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, PeftModule):
            prefix = f"{module_name}." if module_name else ""
            names.update(prefix + n for n in module.peft_parameter_names())
    inner = base_model(model)
    prefix = "base." if inner is not model else ""
    if config.options.get("train_head"):
        heads = head_module_names(inner)
        names.update(
            n for n, _ in model.named_parameters() if any(n.startswith(f"{prefix}{h}.") for h in heads)
        )
    if config.method == "bitfit":
        names.update(n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
    order = [n for n, _ in model.named_parameters()]  # tied parameters once, in model order
    return [n for n in order if n in names]


def mark_only_peft_trainable(model: nn.Module) -> nn.Module:
    """requires_grad True for the PEFT parameters, False for every other (base) parameter."""
    trainable = set(peft_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return model


def trainable_report(model: nn.Module) -> str:
    """'trainable: N / total: M (p%)', parameters shared between modules counted once."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    share = 100.0 * trainable / total if total else 0.0
    return f"trainable: {trainable:,} / total: {total:,} ({share:.4g}%)"


SHAPE_FIELDS = (
    "family",
    "vocab_size",
    "d_model",
    "n_layer",
    "n_decoder_layer",
    "n_head",
    "n_kv_head",
    "head_dim",
    "d_ff",
    "gated_mlp",
)
_IGNORED_FIELDS = ("extra", "dropout", "attention_dropout", "initializer_range")


def config_hash(config: Any) -> str:
    """A short fingerprint of the base architecture (dropout, init range and notes do not count)."""
    data = {k: v for k, v in config.to_dict().items() if k not in _IGNORED_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
