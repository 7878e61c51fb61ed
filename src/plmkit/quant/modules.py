"""Quantized layers: a Linear and an Embedding whose weights are stored as int8 or NF4.

`QuantSpec` says how one weight is stored and multiplied; `QuantLinear` holds the tensors
(`weight` int8 (out, in) + `weight_scale` (out,), or `weight` uint8 NF4 codes + `weight_absmax`
(blocks,), and `bias`) and `linear(module, x)` computes x Wᵀ + b for any module that holds such
tensors: a QuantLinear, a plain nn.Linear, or a PEFT wrapper of either (peft.base.LinearWrapper keeps
the wrapped layer's tensors under the same names, so LoRA on a quantized base is QLoRA).

Kernels (measured on torch 2.13, CPU with AVX-512; see benchmarks/bench_quant.py):
  * int8 weight-only: `torch._weight_int8pack_mm(x, W_int8 (N, K), scales (N,))` needs x and scales of
    one dtype. Its bf16 kernel is vectorised (1.3–1.9× faster than an fp32 matmul for decoding's few
    rows); its fp32 kernel is scalar (~10× slower than fp32), so fp32 activations are rounded to bf16 for
    it (an extra relative error ≤ 2⁻⁸ on x and on the output). The bf16 kernel is only right when K is a
    multiple of 16 (other K give wrong values, K not a multiple of 8 crashes), any M and N. Elsewhere
    (other K, devices without the op) the weight is dequantized and multiplied.
  * int8 dynamic: each row (token) of x is quantized to int8 with its own absmax at run time, then
    `torch._int_mm` (int8 × int8 → int32, oneDNN/VNNI on CPU; on CUDA it needs M > 16 and K, N
    multiples of 8) and a rescale by s_x · s_W. Fastest on this CPU (2–3× an fp32 matmul).
  * NF4: dequantized to the activation dtype, then a float matmul (pure torch, any device).
  * backend "bitsandbytes": int8 uses LLM.int8 (`bnb.matmul` with outlier threshold 6.0: outlier input
    features in 16-bit, the rest int8), NF4 uses `bnb.matmul_4bit`, on the same tensors.
Gradients flow to the input (for LoRA upstream) through a custom autograd function whose backward
multiplies by the dequantized weight, recomputed there instead of kept: the weights themselves are
frozen integers and never get a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.quant import formats

BACKENDS = ("torch", "bitsandbytes")


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is stored (kind) and multiplied (int8 mode, backend)."""

    kind: str = "int8"  # int8 | nf4
    mode: str = "weight"  # int8 only: weight (weight-only) | dynamic (int8 activations per token)
    backend: str = "torch"  # torch | bitsandbytes
    block: int = formats.NF4_BLOCK  # nf4 only

    @property
    def scale_name(self) -> str:
        return "weight_scale" if self.kind == "int8" else "weight_absmax"

    def describe(self) -> str:
        if self.kind == "nf4":
            return f"nf4 (block {self.block}){' via bitsandbytes' if self.backend == 'bitsandbytes' else ''}"
        if self.backend == "bitsandbytes":
            return "int8 (LLM.int8 via bitsandbytes)"
        return f"int8 ({'dynamic' if self.mode == 'dynamic' else 'weight-only'}, per channel)"


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    # Parameters, not buffers: `model.to(device)` then keeps tied tensors (embedding = LM head) tied;
    # an existing Parameter is kept as it is (shared with another module)
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False)


class QuantLinear(nn.Module):
    """y = x Wᵀ + b with W stored quantized; frozen (inference and QLoRA only)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: QuantSpec,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.quant = in_features, out_features, spec
        self.weight = _frozen(weight)  # int8 (out, in) or NF4 codes (numel/2,)
        self.register_parameter(spec.scale_name, _frozen(scale))  # (out,) or (blocks,)
        self.register_parameter("bias", None if bias is None else _frozen(bias))  # registered even if None

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> QuantLinear:
        weight, scale = quantize_weight(linear.weight, spec)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(linear.in_features, linear.out_features, spec, weight, scale, bias)

    @classmethod
    def adopt(cls, module: nn.Module) -> QuantLinear:
        """A QuantLinear holding the very tensors of `module` (a PEFT wrapper of a quantized layer)."""
        spec = module.quant
        return cls(
            module.in_features,
            module.out_features,
            spec,
            module.weight,
            getattr(module, spec.scale_name),
            module.bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.quant.describe()}"


class QuantEmbedding(nn.Module):
    """An nn.Embedding stored as int8 rows with one scale per row (token). A tied LM head multiplies by
    the same rows: x E_int8ᵀ · scale is exactly per-output-channel int8, so the head is a QuantLinear
    sharing these two tensors."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx
        self.weight = _frozen(weight)  # (V, C) int8
        self.weight_scale = _frozen(scale)  # (V,)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> QuantEmbedding:
        q, scale = formats.quantize_int8(embedding.weight)
        return cls(q, scale, embedding.padding_idx)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        rows = F.embedding(input_ids, self.weight).to(self.weight_scale.dtype)
        return rows * self.weight_scale[input_ids].unsqueeze(-1)

    def dequantize(self) -> torch.Tensor:
        return formats.dequantize_int8(self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


# ---- quantize / dequantize one weight -----------------------------------------------------------------
def quantize_weight(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored weight, scale or absmax) of a float (out, in) weight."""
    if spec.kind == "int8":
        return formats.quantize_int8(weight)
    return formats.quantize_nf4(weight, spec.block)


def float_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype a (possibly quantized) linear computes in: its weight's, or its scales'."""
    spec = getattr(module, "quant", None)
    return module.weight.dtype if spec is None else getattr(module, spec.scale_name).dtype


def dequantize_weight(
    module: nn.Module, dtype: torch.dtype | None = None, rows: slice | None = None
) -> torch.Tensor:
    """The (out, in) float weight of a QuantLinear (or a wrapper holding its tensors); with `rows`, only
    those output rows (for NF4 the slice must start and end on block boundaries, see `row_chunks`)."""
    spec = module.quant
    scale = getattr(module, spec.scale_name)
    start, stop = (0, module.out_features) if rows is None else (rows.start, rows.stop)
    if spec.kind == "int8":
        return formats.dequantize_int8(module.weight[start:stop], scale[start:stop], dtype)
    n_in, block = module.in_features, spec.block
    if start * n_in % block:
        raise ValueError(f"NF4 rows from {start} do not start on a block boundary; use row_chunks")
    first, last = start * n_in // block, -(-stop * n_in // block)  # the blocks holding these rows
    return formats.dequantize_nf4(
        module.weight[first * block // 2 : last * block // 2],
        scale[first:last],
        (stop - start, n_in),
        dtype,
        block,
    )


def row_chunks(module: nn.Module, max_elements: int = 1 << 22) -> list[slice]:
    """Output-row slices of at most ~max_elements weights each (NF4: aligned to its blocks)."""
    n_out, n_in = module.out_features, module.in_features
    step = max(1, max_elements // n_in)
    if module.quant.kind == "nf4":  # a chunk must start on a block boundary: rows·in divisible by block
        align = module.quant.block // math.gcd(n_in, module.quant.block)
        step = max(align, step // align * align)
    return [slice(start, min(start + step, n_out)) for start in range(0, n_out, step)]


@torch.no_grad()
def requantize_(module: nn.Module, weight: torch.Tensor) -> None:
    """Store a new float weight (out, in) into the module's quantized tensors, in place."""
    spec = module.quant
    q, scale = quantize_weight(weight.to(float_dtype(module)), spec)
    module.weight.copy_(q)
    getattr(module, spec.scale_name).copy_(scale)


# ---- the forward -----------------------------------------------------------------------------------
def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (..., in) -> (..., out) = x Wᵀ + b for a module holding a float or a quantized linear weight."""
    spec = getattr(module, "quant", None)
    if spec is None:
        return F.linear(x, module.weight, module.bias)
    device = x.device.type
    if torch.is_autocast_enabled(device):  # as F.linear under autocast: compute in the autocast dtype
        x = x.to(torch.get_autocast_dtype(device))
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # (M, in)
    if torch.is_grad_enabled() and x2.requires_grad:
        y = _QuantizedMatmul.apply(x2, module)
    else:
        y = quantized_matmul(module, x2)
    y = y.reshape(*shape[:-1], module.out_features)
    return y if module.bias is None else y + module.bias.to(y.dtype)


class _QuantizedMatmul(torch.autograd.Function):
    """x (M, in) -> x Wᵀ (M, out) with the fast kernel; backward: grad_x = grad_y · W (dequantized then)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        ctx.module = module
        return quantized_matmul(module, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # grad (M, out) -> (M, in)
        module = ctx.module
        # a chunk of rows at a time: a (V, C) LM head never exists in float at once (memory stays flat)
        grad_x = None
        for rows in row_chunks(module):
            part = grad[:, rows] @ dequantize_weight(module, grad.dtype, rows)
            grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x, None


def quantized_matmul(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x (M, in) -> x Wᵀ (M, out) in x's dtype, no bias, no autograd."""
    spec = module.quant
    if spec.backend == "bitsandbytes":
        from plmkit.quant import bnb

        return bnb.matmul(module, x)
    if spec.kind == "nf4":
        return x @ dequantize_weight(module, x.dtype).t()
    if spec.mode == "dynamic":
        return _dynamic_int8(x, module.weight, module.weight_scale)
    return weight_only_int8(x, module.weight, module.weight_scale)


_UNSUPPORTED: set[tuple[str, str, torch.dtype]] = set()  # (op, device type, dtype) that raised once


INT8PACK_K_MULTIPLE = 16  # torch 2.13 CPU: other in_features give wrong bf16 results (or crash if not 8k)


def weight_only_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ (q * scale[:, None])ᵀ for int8 q (N, K): torch's int8pack kernel where it is right
    (K % 16 == 0, a device that has it), else the dequantized weights. Also decoding's int8 path."""
    # the fp32 CPU kernel is scalar: run fp32 activations through the vectorised bf16 one
    compute = torch.bfloat16 if x.dtype == torch.float32 and x.device.type == "cpu" else x.dtype
    key = ("int8pack", x.device.type, compute)
    if key not in _UNSUPPORTED and q.shape[1] % INT8PACK_K_MULTIPLE == 0:
        try:
            y = torch._weight_int8pack_mm(x.to(compute).contiguous(), q, scale.to(compute))
            return y.to(x.dtype)
        except (RuntimeError, NotImplementedError, AttributeError):
            _UNSUPPORTED.add(key)
    return x @ formats.dequantize_int8(q, scale, x.dtype).t()


def int8pack_product(q: torch.Tensor, scale: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x -> torch._weight_int8pack_mm(x, q, scale), x contiguous in the scale's dtype, without
    weight_only_int8's per-call checks; None where the kernel is not right for this shape or does not run
    (probed here once, on a zero row, and remembered like weight_only_int8's failures)."""
    key = ("int8pack", q.device.type, scale.dtype)
    if key in _UNSUPPORTED or q.shape[1] % INT8PACK_K_MULTIPLE:
        return None
    try:
        torch._weight_int8pack_mm(torch.zeros(1, q.shape[1], dtype=scale.dtype, device=q.device), q, scale)
    except (RuntimeError, NotImplementedError, AttributeError):  # no such kernel for this device / dtype
        _UNSUPPORTED.add(key)
        return None
    return lambda x: torch._weight_int8pack_mm(x, q, scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (int8 (M, K), scale (M,) fp32): symmetric, one scale per row (token)."""
    x32 = x.float()
    scale = (x32.abs().amax(dim=1) / formats.INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(x32 / scale[:, None]).clamp(-formats.INT8_MAX, formats.INT8_MAX).to(torch.int8), scale


def _dynamic_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    xq, x_scale = quantize_rows(x)
    m, k = xq.shape
    n = q.shape[0]
    key = ("int_mm", x.device.type, torch.int8)
    # cuBLASLt's int8 GEMM: more than 16 rows, K and N multiples of 8
    cuda_ok = x.device.type != "cuda" or (m > 16 and k % 8 == 0 and n % 8 == 0)
    acc = None
    if cuda_ok and key not in _UNSUPPORTED:
        try:
            acc = torch._int_mm(xq, q.t()).float()  # (M, N) int32 accumulators, exact
        except (RuntimeError, NotImplementedError, AttributeError):
            _UNSUPPORTED.add(key)
    if acc is None:  # the same products in float (exact while K·127² < 2²⁴)
        acc = xq.float() @ q.float().t()
    return (acc * x_scale[:, None] * scale.float()[None, :]).to(x.dtype)
