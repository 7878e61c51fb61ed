"""Mixed precision: bf16 autocast on CPU and GPU, fp16 with a gradient scaler on GPU, or plain fp32."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from plmkit.errors import ConfigError, did_you_mean
from plmkit.model.hardware import cpu_bf16_is_fast

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise ConfigError(
            f"train.precision={name!r} is not one of {', '.join(PRECISIONS)}{did_you_mean(name, PRECISIONS)}"
        )
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bf16_is_fast() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=fp16 needs a CUDA device (fp16 on CPU has no fast kernels); use bf16 or fp32"
        )
    return name


@dataclass
class Precision:
    """Autocast context for forward passes and the gradient scaler (active for fp16 only)."""

    name: str
    device: torch.device

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)
