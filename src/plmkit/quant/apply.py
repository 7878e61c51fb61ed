"""Quantize a whole plmkit model, rebuild a quantized one from its checkpoint, or dequantize it again.

What is quantized: every Linear inside the transformer blocks (attention, cross-attention, MLP) with the
mode's format; with `embeddings` (the default) also every embedding table of the stacks (tokens, learned
positions, segments) as int8 rows and the LM head: a tied head reuses the token embedding's int8 rows and
scales (no second copy), an untied one is quantized as int8 per output channel (NF4 mode too: the head
is read in full every decoding step, where int8 is faster than dequantizing NF4). Norms, biases, T5's
position bias, BERT's head transform and task heads stay in float: they are small.

The result is frozen (requires_grad False everywhere) and recorded as `model.quant_config`, which
plmkit.io writes to plmkit.json, so `plmkit.load` rebuilds the quantized layers before reading the weights.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError, did_you_mean
from plmkit.quant import bnb, formats
from plmkit.quant.modules import BACKENDS, QuantEmbedding, QuantLinear, QuantSpec, dequantize_weight

MODES = ("int8", "int8-dynamic", "nf4")


@dataclass(frozen=True)
class QuantConfig:
    mode: str = "int8"  # int8 (weight-only) | int8-dynamic (int8 activations too) | nf4 (4-bit)
    embeddings: bool = True  # embedding tables and the LM head as int8 rows
    backend: str = "torch"  # torch | bitsandbytes (LLM.int8 for int8, its 4-bit kernel for nf4)
    block_size: int = formats.NF4_BLOCK  # nf4 absmax block

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"unknown quantization mode {self.mode!r}{did_you_mean(str(self.mode), MODES)}; "
                f"modes: {', '.join(MODES)}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown quantization backend {self.backend!r}"
                f"{did_you_mean(str(self.backend), BACKENDS)}; backends: {', '.join(BACKENDS)}"
            )
        if not isinstance(self.block_size, int) or self.block_size <= 0 or self.block_size % 2:
            raise ConfigError(f"nf4 block_size must be a positive even integer, got {self.block_size!r}")
        if self.backend == "bitsandbytes":
            bnb.check_spec(self.linear_spec().kind, self.linear_spec().mode)

    def linear_spec(self) -> QuantSpec:
        if self.mode == "nf4":
            return QuantSpec("nf4", backend=self.backend, block=self.block_size)
        return QuantSpec("int8", "dynamic" if self.mode == "int8-dynamic" else "weight", self.backend)

    def head_spec(self) -> QuantSpec:
        """The LM head's: int8 rows (they may be the embedding's), multiplied as the mode's int8."""
        if self.mode == "nf4":
            return QuantSpec("int8")
        return self.linear_spec()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> QuantConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or any(k not in names for k in data):
            raise ConfigError(
                f"{where}: invalid quantization entry {data!r}; expected keys {', '.join(names)}"
            )
        config = cls(**data)
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return config


def inner_model(model: nn.Module) -> nn.Module:
    """The plmkit model inside a prompt-tuning wrapper (the other PEFT methods work in place)."""
    return model.base if getattr(model, "is_peft_wrapper", False) else model


def quant_config(model: nn.Module) -> QuantConfig | None:
    return getattr(inner_model(model), "quant_config", None)


def is_quantized(model: nn.Module) -> bool:
    return quant_config(model) is not None


def _in_block(name: str) -> bool:
    return name.startswith("blocks.") or ".blocks." in name


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize(
    model: nn.Module,
    mode: str = "int8",
    *,
    embeddings: bool = True,
    backend: str = "torch",
    block_size: int = formats.NF4_BLOCK,
) -> nn.Module:
    """Replace the model's Linears (and embeddings) by quantized ones, in place; returns the model."""
    config = QuantConfig(mode, embeddings, backend, block_size)
    config.validate()
    if is_quantized(model):
        raise ConfigError(
            f"this {type(inner_model(model)).__name__} is already quantized "
            f"({quant_config(model).mode}); quantize the float model instead"
        )
    if getattr(model, "peft_config", None) is not None:
        raise ConfigError(
            "quantize the base model before applying PEFT: plmkit.quant.quantize(model, ...) "
            "then plmkit.peft.apply(model, 'lora', ...) (QLoRA)"
        )
    if not hasattr(model, "config"):
        raise ConfigError(f"plmkit.quant.quantize needs a plmkit model, got {type(model).__name__}")
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _in_block(n)]
    if not targets:
        raise ConfigError(
            f"{type(model).__name__} has no Linear layers inside transformer blocks to quantize"
        )
    spec = config.linear_spec()
    with torch.no_grad():
        for name in targets:  # one layer at a time: each float weight is freed as soon as it is replaced
            _set(model, name, QuantLinear.from_linear(model.get_submodule(name), spec))
        if embeddings:
            _quantize_embeddings(model, config.head_spec())
    model.quant_config = config
    for param in model.parameters():
        param.requires_grad_(False)  # for inference and QLoRA: nothing of the base trains
    return model


def _quantize_embeddings(model: nn.Module, head_spec: QuantSpec) -> None:
    from plmkit.model.layers import Embeddings
    from plmkit.model.pretrained import LMHead

    modules = list(model.named_modules(remove_duplicate=False))
    by_weight: dict[int, QuantEmbedding] = {}  # float weight id -> its int8 replacement (shared tables once)
    for _, module in modules:
        if isinstance(module, Embeddings):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Embedding):
                    if id(child.weight) not in by_weight:
                        by_weight[id(child.weight)] = QuantEmbedding.from_embedding(child)
                    setattr(module, child_name, by_weight[id(child.weight)])
    for _, module in modules:
        if isinstance(module, LMHead) and isinstance(module.decoder, nn.Linear):
            decoder = module.decoder
            tied = by_weight.get(id(decoder.weight))
            if tied is None:
                module.decoder = QuantLinear.from_linear(decoder, head_spec)
            else:  # the tied head multiplies by the embedding's own int8 rows and scales
                bias = None if decoder.bias is None else decoder.bias.detach().clone()
                module.decoder = QuantLinear(
                    decoder.in_features, decoder.out_features, head_spec, tied.weight, tied.weight_scale, bias
                )


def rebuild(model: nn.Module, recorded: Any, where: str) -> nn.Module:
    """The quantized layout recorded in a checkpoint, on a freshly built float model (plmkit.io.load;
    the values are then overwritten by the checkpoint's tensors)."""
    if isinstance(recorded, dict) and recorded.get("backend") == "bitsandbytes" and not bnb.available():
        # the same tensors, multiplied by the torch kernels instead
        warnings.warn(
            f"{where}: quantized for the bitsandbytes backend, which is not installed; "
            "using the torch kernels on the same weights"
        )
        recorded = {**recorded, "backend": "torch"}
    config = QuantConfig.from_dict(recorded, where)
    return quantize(model, **config.to_dict())


def check_trainable(model: nn.Module) -> None:
    """Refuse to build an optimizer for a quantized model's weights (they are frozen integers)."""
    config = quant_config(model)
    if config is not None and getattr(model, "peft_config", None) is None:
        raise ConfigError(
            f"this model is quantized ({config.mode}): its weights are frozen integers and cannot "
            "be trained; fine-tune it with LoRA on top (plmkit.peft.apply(model, 'lora', ...): "
            "QLoRA) or train the float checkpoint"
        )


def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized layer by a float one holding its dequantized weights (in place): a plain
    plmkit model again, e.g. for save_hf. The values are the quantized ones, not the original floats."""
    if not is_quantized(model):
        raise ConfigError("this model is not quantized; nothing to dequantize")
    if getattr(model, "peft_config", None) is not None:
        raise ConfigError(
            "dequantize the base before applying PEFT, or merge the adapter first "
            "(plmkit.peft.merge(model, unload=True))"
        )
    floats: dict[int, nn.Parameter] = {}  # int8 weight id -> float Parameter (keeps embedding = head tied)
    modules = list(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name, module in modules:
            if isinstance(module, QuantEmbedding):
                if id(module.weight) not in floats:
                    floats[id(module.weight)] = nn.Parameter(module.dequantize())
                embedding = nn.Embedding(
                    module.num_embeddings, module.embedding_dim, module.padding_idx, device="meta"
                )
                embedding.weight = floats[id(module.weight)]
                _set(model, name, embedding)
        for name, module in modules:
            if isinstance(module, QuantLinear):
                if id(module.weight) not in floats:
                    floats[id(module.weight)] = nn.Parameter(dequantize_weight(module))
                linear = nn.Linear(
                    module.in_features, module.out_features, bias=module.bias is not None, device="meta"
                )
                linear.weight = floats[id(module.weight)]
                linear.bias = module.bias
                _set(model, name, linear)
    del model.quant_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model


# ---- sizes ------------------------------------------------------------------------------------------
@dataclass
class QuantReport:
    mode: str
    linears: int  # quantized Linear layers (a tied LM head included)
    embeddings: int  # quantized embedding tables
    float_bytes: int  # the state dict with every quantized weight in its float dtype (tied tensors once)
    quantized_bytes: int  # the state dict as stored

    @property
    def ratio(self) -> float:
        return self.float_bytes / max(self.quantized_bytes, 1)

    def __str__(self) -> str:
        return (
            f"{self.mode}: {self.linears} linear layers, {self.embeddings} embedding tables; weights "
            f"{_mb(self.float_bytes)} -> {_mb(self.quantized_bytes)} ({self.ratio:.2f}x smaller)"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def report(model: nn.Module) -> QuantReport:
    """Bytes of the model's tensors before (float) and after quantization, as a checkpoint stores them."""
    from plmkit.weights import dedupe_shared  # what save_weights writes: tied tensors once

    config = quant_config(model)
    if config is None:
        raise ConfigError("this model is not quantized; call plmkit.quant.quantize(model, mode) first")
    model = inner_model(model)
    stored, _ = dedupe_shared(model.state_dict())
    float_size: dict[str, int] = {}  # stored name -> bytes it would take in float (scales: 0)
    linears = tables = 0
    for name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        if isinstance(module, QuantLinear):
            linears += 1
            scale_name, shape = module.quant.scale_name, (module.out_features, module.in_features)
        elif isinstance(module, QuantEmbedding):
            tables += 1
            scale_name, shape = "weight_scale", tuple(module.weight.shape)
        else:
            continue
        float_size[prefix + "weight"] = shape[0] * shape[1] * getattr(module, scale_name).element_size()
        float_size[prefix + scale_name] = 0
    quantized = sum(t.numel() * t.element_size() for t in stored.values())
    floating = sum(float_size.get(n, t.numel() * t.element_size()) for n, t in stored.items())
    return QuantReport(config.mode, linears, tables, floating, quantized)
