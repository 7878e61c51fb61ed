"""The two weight formats, as plain tensor functions (no modules): per-channel int8 and blockwise NF4.

int8, symmetric per output channel (row):   s_o = max_i |W_oi| / 127,   q_oi = round(W_oi / s_o) ∈ [-127, 127]
    W ≈ q · s[:, None]; the error of every weight is at most s_o / 2 (half a quantization step).

NF4 (QLoRA, Dettmers et al. 2023): the flattened weight is cut into blocks of 64; each block is divided
by its absmax and every value rounded to the nearest of 16 levels that are quantiles of N(0, 1) scaled to
[-1, 1] (with an exact zero); two 4-bit codes share a byte, the even element in the high nibble. This is
bitsandbytes' layout, so its 4-bit kernels read our tensors as they are.
"""

from __future__ import annotations

import torch

from plmkit.errors import ShapeError

INT8_MAX = 127  # symmetric: -128 is never used, so q and -q are both representable
NF4_BLOCK = 64
_TINY = torch.finfo(torch.float32).tiny  # the scale of an all-zero row or block: any positive value works


# ---- int8, per output channel ------------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in) float -> (q (out, in) int8, scale (out,) in weight's dtype), weight ≈ q * scale[:, None]."""
    if weight.dim() != 2:
        raise ShapeError(f"int8 quantization takes a 2D (out, in) weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=_TINY)  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale.to(weight.dtype)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(out, in) float: q * scale[:, None], in `dtype` (default: the scale's)."""
    dtype = dtype or scale.dtype
    return q.to(dtype) * scale.to(dtype)[:, None]


# ---- NF4, blockwise --------------------------------------------------------------------------------
def nf4_levels() -> torch.Tensor:
    """The 16 NF4 values, ascending, from -1 to 1 with an exact 0 (QLoRA's construction).

    8 positive and 7 negative quantiles of N(0, 1), taken at evenly spaced probabilities between 0.5 and
    0.9677 (so the extreme quantile is finite), then divided by the largest: an asymmetric code that
    keeps 0 exact. float64 then rounded to float32 agrees with bitsandbytes' table to 1e-7."""
    offset = 0.9677083
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat((positive, negative, torch.zeros(1, dtype=torch.float64))).sort().values
    return (levels / levels.max()).float()


NF4_LEVELS = nf4_levels()
_NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2  # rounding to the nearest level = bucketize here
# byte b -> (level of its high nibble, level of its low nibble): one gather decodes two weights
_NF4_PAIRS = torch.stack((NF4_LEVELS.repeat_interleave(16), NF4_LEVELS.repeat(16)), dim=1)  # (256, 2)


def nf4_sizes(numel: int, block: int = NF4_BLOCK) -> tuple[int, int]:
    """(bytes of packed codes, number of blocks) for a weight of `numel` elements (the last block padded)."""
    if block <= 0 or block % 2:
        raise ShapeError(f"nf4 block size must be a positive even number, got {block}")
    n_blocks = -(-numel // block)
    return n_blocks * block // 2, n_blocks


def quantize_nf4(weight: torch.Tensor, block: int = NF4_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (any shape) -> (codes (numel/2,) uint8, absmax (n_blocks,) in weight's dtype)."""
    n_bytes, n_blocks = nf4_sizes(weight.numel(), block)
    flat = weight.detach().float().reshape(-1)
    flat = torch.cat((flat, flat.new_zeros(n_blocks * block - flat.numel())))  # pad the last block
    blocks = flat.view(n_blocks, block)
    absmax = blocks.abs().amax(dim=1).clamp(min=_TINY)  # (n_blocks,)
    codes = torch.bucketize(blocks / absmax[:, None], _NF4_MIDPOINTS.to(flat.device)).to(torch.uint8)
    codes = codes.view(-1, 2)
    packed = (codes[:, 0] << 4) | codes[:, 1]  # even element in the high nibble
    return packed, absmax.to(weight.dtype)


def dequantize_nf4(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
    block: int = NF4_BLOCK,
) -> torch.Tensor:
    """The float weight of `shape` back from (codes, absmax), in `dtype` (default: absmax's)."""
    dtype = dtype or absmax.dtype
    pairs = _NF4_PAIRS.to(device=packed.device, dtype=dtype)
    values = (
        pairs.index_select(0, packed.int()).view(-1, block) * absmax.to(dtype)[:, None]
    )  # (blocks, block)
    numel = 1
    for size in shape:
        numel *= size
    return values.reshape(-1)[:numel].view(shape)
