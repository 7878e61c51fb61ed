"""What the device runs fast: one answer for training (precision "auto") and decoding (bf16 prefill)."""

from __future__ import annotations

import torch


def cpu_bf16_is_fast() -> bool:
    """bf16 matmuls beat fp32 on CPUs with AMX tiles or AVX512-BF16 (measured 1.65-1.8x per training step
    on an AVX512-BF16 CPU, benchmarks/run.py --only train-gpt2); elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def bf16_matmuls_are_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_is_fast()
