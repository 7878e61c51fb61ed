"""The bitsandbytes backend: LLM.int8 and 4-bit kernels on plmkit's own quantized tensors.

plmkit stores int8 weights per output channel (q, s = absmax / 127) and NF4 weights in bitsandbytes'
4-bit layout (codes two per byte, even element high, one absmax per block of 64). Those are exactly
what `bnb.nn.Linear8bitLt` (CB, SCB = absmax) and `bnb.nn.Linear4bit` (packed weight + QuantState)
hold, so this backend calls the kernels those modules call — `bnb.matmul` with an LLM.int8 state
(outlier threshold 6.0) and `bnb.matmul_4bit` — on our tensors instead of converting them into bnb
modules. One checkpoint format serves both backends, and the weights are never rewritten in place
(Linear4bit repacks its weight for CPU on first use, which would break "base bytes unchanged").

bitsandbytes' fast kernels need CUDA; version 0.50 also runs these ops on CPU (slowly), which is
how the tests check this backend without a GPU.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.quant import formats

LLM_INT8_THRESHOLD = 6.0  # input features with |x| above this are multiplied in 16-bit (Dettmers 2022)


def require(purpose: str = "backend bitsandbytes", instead: str = "use backend torch") -> Any:
    """The bitsandbytes module, or a ConfigError saying how to install it. Its import is quiet: on CPUs
    with AVX512-BF16 it logs a warning about an optional kernel package plmkit does not use."""
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("bitsandbytes")
    except ImportError as e:
        raise ConfigError(
            f"{purpose} needs the bitsandbytes package ({e}); pip install 'plmkit[quant]' or {instead}"
        ) from None
    finally:
        quiet.setLevel(level)


def available() -> bool:
    try:
        require()
    except ConfigError:
        return False
    return True


def matmul(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (M, in) -> x Wᵀ (M, out) in x's dtype with the bitsandbytes kernel of the module's kind."""
    bnb = require()
    spec = module.quant
    with warnings.catch_warnings():  # "inputs will be cast to float16": LLM.int8 does that by design
        warnings.simplefilter("ignore")
        if spec.kind == "nf4":
            state = bnb.functional.QuantState(
                absmax=module.weight_absmax.float(),
                shape=torch.Size((module.out_features, module.in_features)),
                code=formats.NF4_LEVELS.to(x.device),
                blocksize=spec.block,
                quant_type="nf4",
                dtype=x.dtype,
            )
            return bnb.matmul_4bit(x, module.weight.view(-1, 1).t(), quant_state=state).to(x.dtype)
        from bitsandbytes.autograd._functions import MatmulLtState

        state = MatmulLtState()
        state.CB = module.weight  # (out, in) int8, row-wise
        state.SCB = (module.weight_scale.float() * formats.INT8_MAX).contiguous()  # row absmax
        state.threshold = LLM_INT8_THRESHOLD
        state.has_fp16_weights = False
        state.is_training = False  # the weights are frozen: no int8 weight-gradient state
        return bnb.matmul(x, module.weight, state=state).to(x.dtype)


def check_spec(kind: str, mode: str) -> None:
    """Refuse what this backend cannot do (and a missing package) before any weight is touched."""
    require()
    if kind == "int8" and mode == "dynamic":
        raise ConfigError(
            "int8-dynamic has no bitsandbytes kernel; use backend torch, or mode int8 "
            "(LLM.int8) with backend bitsandbytes"
        )
