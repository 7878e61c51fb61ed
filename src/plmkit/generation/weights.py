"""Decode-time weights: every matrix of a model's decoding stack in the layout and dtype that reads
fastest, prepared once per (model, dtype, layout) and reused while the weights do not change.

Decoding multiplies a few rows by every weight matrix once per token, so it streams all the weights
from memory and its speed is bytes read per second. Measured on a 2-core AMD EPYC (AVX-512, torch
2.13, 2 threads; noisy shared machine): an fp32 matrix-vector product from DRAM runs ~7 GB/s through
F.linear with W stored (out, in) and 12-15 GB/s as `x @ W` with W stored (in, out); in bf16 both layouts
run 6-7 GB/s, so bf16 keeps (out, in) (no transposed copy); int8 weight-only uses
torch._weight_int8pack_mm (bf16 activations). Hence, on CPU and for at most MATVEC_ROWS rows:
  "fp32"  the model's own float weights; fp32 matrices as contiguous (in, out) copies, split into one
          column block per torch thread and multiplied in one bmm / baddbmm (below)
  "bf16"  bf16 copies, (out, in), F.linear
  "int8"  per-output-channel int8 (absmax / 127) + bf16 scales, the int8pack kernel
Elsewhere (more rows, GPU) "fp32" multiplies the model's own tensors (no copy).
`make bench` on a quiet machine (2026-12-06) confirmed the choice: from DRAM, fp32 16.5 GB/s (F.linear)
vs 21.6 GB/s (x @ W), bf16 19.6 vs 16.6 GB/s. With 4 to 32 rows the two fp32 layouts are within ~10%,
and batch-8 decoding measured the same with MATVEC_ROWS 2 or 32.
Column blocks (2026-12-07, a 2-core AMD EPYC with AVX2, 2 threads): a one-row `mm` ran at 17.5 GB/s on 1
thread and 18.4 GB/s on 2, so torch runs it on one core. The same product as a `bmm` over 2 column blocks
uses both: greedy decode steps 1.15x (LLaMA 6x384), 1.16x (GPT-2 12x768), 1.25x (GPT-2 6x384) and 1.30x
(T5 6x384) faster at batch 1, 1.45x at batch 8 (GPT-2 6x384), with the same greedy ids (7 interleaved
rounds each). Other thread counts were not measured.

Two more choices, A/B in 7-9 interleaved rounds on a 2-core AMD EPYC with AVX512-BF16 (2026-12-07, 2
threads, 6x384 models): the KV cache and attention stay fp32 on the CPU under bf16 / int8 products
(cache_dtype): decode steps 1.02-1.06x faster at batch 1 and 1.09-1.15x at batch 8 (GPT-2, LLaMA, T5);
int8 products call the int8pack kernel directly (quant.modules.int8pack_product): 1.11x at batch 1, 1.04x at batch 8,
the same greedy ids.

The prepared tensors live in a module-level table keyed weakly by the model (nothing is stored on the
model; the entry goes with the model) and stamped with every parameter's (data_ptr, _version): an
optimizer step, load_state_dict or .to() changes a stamp, and the next generate call prepares again,
so a model that trains between calls never decodes with stale weights. One exception: a fused optimizer
(torch's AdamW fused=True, torch 2.13) writes in place without bumping the versions; plmkit's training
engine bumps them after every step (plmkit.train.loop.mark_updated), and a hand-written loop with a fused
optimizer calls that function after its step. Layers that are not a plain
nn.Linear (LoRA wrappers, plmkit.quant layers) run their own forward.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.model.hardware import bf16_matmuls_are_fast
from plmkit.quant.formats import quantize_int8
from plmkit.quant.modules import int8pack_product, weight_only_int8

DecodeDtype = Literal["fp32", "bf16", "int8"]
MATVEC_ROWS = 32  # (in, out) fp32 copies up to this many rows: 1.7x faster at 1 row, within ~10% at 4-32

Linear = Callable[[torch.Tensor], torch.Tensor]  # (M, in) -> (M, out), in the compute dtype

_TABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: (stamp, value)}
_LOCK = threading.Lock()


def compute_dtype(model: nn.Module, dtype: DecodeDtype) -> torch.dtype:
    """The dtype of activations and of the KV cache: the model's own float dtype for "fp32", else bf16."""
    if dtype == "fp32":
        return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.bfloat16


def cache_dtype(model: nn.Module, dtype: DecodeDtype) -> torch.dtype:
    """The dtype of the KV cache and of attention over it. On the CPU fp32 whatever the decode weights: torch
    2.13's CPU attention for one query is 4-6x slower in bf16 than in fp32 (1 thread, 6 heads x 64, 16 to
    144 keys: 16-108 us vs 7-18 us; batch 8 x 80 keys: 405 vs 78 us; AMD EPYC with AVX512-BF16), and a
    step's attention reads only the cache, not the weights. Elsewhere (CUDA) the compute dtype."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.float32 if device.type == "cpu" else compute_dtype(model, dtype)


def prefill_autocast(model: nn.Module, dtype: DecodeDtype) -> contextlib.AbstractContextManager:
    """The context the prompt's forward (prefill) runs in. With bf16 decode weights, an fp32 model and a
    device whose bf16 matmuls are fast (AMX / AVX512-BF16 CPUs, CUDA): bf16 autocast, since a long prompt is
    a matmul-bound forward (512 tokens, 6x384, AMD EPYC with AVX512-BF16, 2 threads: GPT-2 95 -> 62 ms,
    LLaMA 91 -> 65 ms, T5 128 -> 76 ms). Otherwise (fp32 or int8 decoding, emulated bf16) the model's dtype."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    fp32 = compute_dtype(model, "fp32") == torch.float32
    if dtype == "bf16" and fp32 and bf16_matmuls_are_fast(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def stamp(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def cached(model: nn.Module, key: tuple, build: Callable[[], object]) -> object:
    """build(), made once per (model, key) while no parameter of the model changes (see the docstring)."""
    now = stamp(model)
    with _LOCK:  # two threads starting at once build once
        entries = _TABLE.setdefault(model, {})
        hit = entries.get(key)
        if hit is not None and hit[0] == now:
            return hit[1]
        value = build()
        entries[key] = (now, value)
        return value


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> Linear:
    """plmkit.quant's weight-only int8 format and kernel: torch._weight_int8pack_mm called directly where
    it runs for this matrix (quant.modules.int8pack_product, probed once), else plmkit.quant's weight_only_int8 with its fallback.
    The direct call skips that function's per-call checks and no-op conversions (a step makes 25-40
    products of a few microseconds each)."""
    q, scale = quantize_int8(weight)
    scale = scale.to(dtype)
    bias = None if bias is None else bias.detach().to(dtype)
    # bf16 activations (the int8 compute dtype); the fp32 CPU kernel is scalar (quant.modules)
    direct = int8pack_product(q, scale) if dtype == torch.bfloat16 else None
    product = direct or (lambda x: weight_only_int8(x, q, scale))
    if bias is None:
        return product
    return lambda x: product(x) + bias


def prepare_linear(module: nn.Module, dtype: DecodeDtype, cdtype: torch.dtype, matvec: bool) -> Linear:
    """The decode-time product x -> x Wᵀ + b of one linear layer (x (M, in) in the compute dtype)."""
    if type(module) is not nn.Linear:  # LoRA wrapper, quantized layer, ...: its own forward
        own = next((p.dtype for p in module.parameters() if p.is_floating_point()), cdtype)
        if own == cdtype:
            return module
        return lambda x: module(x.to(own)).to(cdtype)
    weight, bias = module.weight.detach(), module.bias
    bias = None if bias is None else bias.detach()
    if dtype == "int8":
        return _int8_linear(weight, bias, cdtype)
    weight = weight.to(cdtype)
    bias = None if bias is None else bias.to(cdtype)
    if matvec and cdtype == torch.float32 and weight.device.type == "cpu":
        return _column_blocks(weight, bias, torch.get_num_threads())
    return lambda x: F.linear(x, weight, bias)


def _column_blocks(weight: torch.Tensor, bias: torch.Tensor | None, parts: int) -> Linear:
    """x Wᵀ + b for a few rows of x as one batched product over `parts` column blocks of W, each stored
    (in, out / parts): torch runs a product of a few rows on one thread, a batched one on all of them
    (docstring). The last block is padded with zero columns when `parts` does not divide out."""
    out_f, in_f = weight.shape
    if parts <= 1:
        weight_t = weight.t().contiguous()  # (in, out): the fast matrix-vector layout
        if bias is None:
            return lambda x: torch.mm(x, weight_t)
        return lambda x: torch.addmm(bias, x, weight_t)
    chunk = -(-out_f // parts)
    pad = parts * chunk - out_f
    blocks = (
        F.pad(weight, (0, 0, 0, pad)).view(parts, chunk, in_f).transpose(1, 2).contiguous()
    )  # (P, in, chunk)
    bias_blocks = None if bias is None else F.pad(bias, (0, pad)).view(parts, 1, chunk)

    def product(x: torch.Tensor) -> torch.Tensor:  # x (M, in) -> (M, out)
        m = x.shape[0]
        xs = x.expand(parts, m, in_f)
        y = torch.bmm(xs, blocks) if bias_blocks is None else torch.baddbmm(bias_blocks, xs, blocks)
        y = y.transpose(0, 1).reshape(m, parts * chunk)  # (P, M, chunk) -> (M, P * chunk)
        return y[:, :out_f] if pad else y

    return product
