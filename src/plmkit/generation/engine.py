"""The decode step without the model's forward: one pass over the blocks with prepared weights
(generation/weights.py) and the static KV cache (model/kv_cache.py), for one new token per row.

The model's forward builds masks, checks arguments and calls nested modules at every token; here a
step is the plain sequence of tensor ops: embed, then per block norm, fused qkv product, rotary, an
in-place cache write, attention over the filled columns, output product, MLP; then the LM head. The
prompt itself (prefill) still runs through the model's forward, which fills the same cache.

`plan(model, dtype, rows)` returns None where the model is not a stock family model this pass can
reproduce exactly (a wrapper such as prompt tuning, forward hooks such as prefix tuning, a subclass
with its own forward); the decoder then steps through the model's forward instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.generation.weights import (
    MATVEC_ROWS,
    DecodeDtype,
    Linear,
    cache_dtype,
    cached,
    compute_dtype,
    prepare_linear,
)
from plmkit.model.kv_cache import StaticCache
from plmkit.model.layers import RMSNorm, apply_rotary, relative_position_bucket
from plmkit.model.pretrained import LMHead
from plmkit.model.stack import Stack
from plmkit.model.transformer import Seq2SeqLM, StackLM

Norm = Callable[[torch.Tensor], torch.Tensor]  # a prepared norm: x (M, C) -> (M, C)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()  # as model.layers.RMSNorm: the statistics in fp32
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _prepare_norm(module: nn.Module | None, cdtype: torch.dtype):
    if module is None:
        return None
    if type(module) is nn.LayerNorm:
        weight = None if module.weight is None else module.weight.detach().to(cdtype)
        bias = None if module.bias is None else module.bias.detach().to(cdtype)
        return partial(
            F.layer_norm, normalized_shape=module.normalized_shape, weight=weight, bias=bias, eps=module.eps
        )
    if type(module) is RMSNorm:
        return partial(_rms_norm, weight=module.weight.detach().to(cdtype), eps=module.eps)
    return lambda x: module(x).to(cdtype)


@dataclass(frozen=True)
class BlockPlan:
    pre_norm: bool
    attn_norm: Norm
    qkv: Linear
    out: Linear
    cross_norm: Norm | None
    cross_q: Linear | None
    cross_out: Linear | None
    mlp_norm: Norm
    fc_in: Linear
    fc_out: Linear
    act: object
    gated: bool


@dataclass(frozen=True)
class Plan:
    cdtype: torch.dtype  # activations and products
    kv_dtype: torch.dtype  # the KV cache and attention over it (weights.cache_dtype)
    stack: Stack
    blocks: tuple[BlockPlan, ...]
    final_norm: Norm | None
    head_transform: Linear | None
    head_act: object
    head_norm: Norm | None
    head_scale: float
    head: Linear
    n_head: int
    n_kv_head: int
    head_dim: int
    scale: float | None


def _has_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def eligible(model: nn.Module) -> bool:
    """A stock causal / prefix / seq2seq model whose forward this pass reproduces (see the docstring)."""
    if isinstance(model, Seq2SeqLM):
        own = type(model).forward is Seq2SeqLM.forward
    else:
        own = isinstance(model, StackLM) and type(model).forward is StackLM.forward
    dense = model.config.n_experts is None  # routed experts decode through the model's own forward
    return own and dense and model.config.family in ("causal", "prefix", "seq2seq") and not _has_hooks(model)


def plan(model: nn.Module, dtype: DecodeDtype, rows: int) -> Plan | None:
    """The prepared decode step for `rows` rows, made once per model, dtype and layout (weights.cached)."""
    if not eligible(model):
        return None
    matvec = rows <= MATVEC_ROWS
    return cached(model, ("plan", dtype, matvec), lambda: _build(model, dtype, matvec))


def _build(model: nn.Module, dtype: DecodeDtype, matvec: bool) -> Plan:
    cdtype = compute_dtype(model, dtype)
    stack = model.decoder if isinstance(model, Seq2SeqLM) else model.transformer
    lin = partial(prepare_linear, dtype=dtype, cdtype=cdtype, matvec=matvec)
    blocks = []
    for block in stack.blocks:
        cross = block.cross_attn
        blocks.append(
            BlockPlan(
                pre_norm=block.pre_norm,
                attn_norm=_prepare_norm(block.attn_norm, cdtype),
                qkv=lin(block.attn.qkv),
                out=lin(block.attn.out),
                cross_norm=_prepare_norm(block.cross_norm, cdtype) if cross is not None else None,
                cross_q=lin(cross.q) if cross is not None else None,
                cross_out=lin(cross.out) if cross is not None else None,
                mlp_norm=_prepare_norm(block.mlp_norm, cdtype),
                fc_in=lin(block.mlp.fc_in),
                fc_out=lin(block.mlp.fc_out),
                act=block.mlp.act,
                gated=block.mlp.gated,
            )
        )
    head: LMHead = model.lm_head
    attn = stack.blocks[0].attn
    return Plan(
        cdtype=cdtype,
        kv_dtype=cache_dtype(model, dtype),
        stack=stack,
        blocks=tuple(blocks),
        final_norm=_prepare_norm(stack.final_norm, cdtype),
        head_transform=lin(head.transform) if head.transform is not None else None,
        head_act=head.transform_act,
        head_norm=_prepare_norm(head.transform_norm, cdtype),
        head_scale=head.scale,
        head=lin(head.decoder),
        n_head=attn.n_head,
        n_kv_head=attn.n_kv_head,
        head_dim=attn.head_dim,
        scale=attn.scale,
    )


def relative_bias_table(stack: Stack, length: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(1, H, 1, length) T5 bias of a query at column `length - 1` over keys 0..length-1: the bias of a
    query at column L is the last L + 1 columns (it depends on key - query only)."""
    if stack.relative_bias is None:
        return None
    rel = stack.relative_bias
    offsets = torch.arange(-(length - 1), 1, device=rel.bias.weight.device)
    buckets = relative_position_bucket(offsets, rel.bidirectional, rel.num_buckets, rel.max_distance)
    return rel.bias(buckets).t()[None, :, None, :].to(dtype).contiguous()


def step(
    p: Plan,
    cache: StaticCache,
    tokens: torch.Tensor,  # (B,) long
    positions: torch.Tensor,  # (B, 1) long: each row's position of this token
    mask: torch.Tensor | None,  # additive (B|1, 1|H, 1, length + 1) over the self-attention keys, kv_dtype
    cross_mask: torch.Tensor | None,  # additive (B, 1, 1, S) over the encoder's states, kv_dtype
    columns: torch.Tensor | None = None,  # (B,) long: per-row write columns (a server's slots), or None
    widths: Sequence[int] = (),  # with columns: the key columns row b attends (columns[b] + 1)
) -> torch.Tensor:
    """Next-token logits (B, V) after `tokens`; writes their keys/values at column cache.length.

    With `columns` (continuous batching, plmkit.serve): row b of the batch is row b of the cache and holds
    its own sequence; it writes at columns[b] and attends over its first widths[b] columns, in an
    attention call of its own (`mask` unused): a row's result then does not depend on the other rows'
    lengths (one masked call over the longest row rounds differently). cache.length is not used."""
    b, col = tokens.shape[0], cache.length
    rows = torch.arange(b, device=tokens.device) if columns is not None else None
    span = max(widths) if columns is not None else col + 1
    n_head, n_kv, hd = p.n_head, p.n_kv_head, p.head_dim
    q_width, kv_width = n_head * hd, n_kv * hd
    gqa = n_kv != n_head
    stack = p.stack
    recast = p.kv_dtype != p.cdtype  # bf16 / int8 weights on the CPU: attention in fp32 (weights.cache_dtype)
    x = stack.embed(tokens[:, None], positions)[:, 0].to(p.cdtype)  # (B, C)
    rotary = stack.rotary.cos_sin(positions, p.kv_dtype) if stack.rotary is not None else None
    for i, blk in enumerate(p.blocks):
        keys, values = cache.room(i, span, n_kv)
        h = blk.attn_norm(x) if blk.pre_norm else x
        qkv = blk.qkv(h)
        if recast:
            qkv = qkv.to(p.kv_dtype)
        q = qkv[:, :q_width].view(b, n_head, 1, hd)
        k = qkv[:, q_width : q_width + kv_width].view(b, n_kv, 1, hd)
        v = qkv[:, q_width + kv_width :].view(b, n_kv, 1, hd)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if rows is None:
            keys[:, :, col : col + 1].copy_(k)
            values[:, :, col : col + 1].copy_(v)
            y = F.scaled_dot_product_attention(
                q, keys[:, :, :span], values[:, :, :span], attn_mask=mask, scale=p.scale, enable_gqa=gqa
            )
        else:
            keys[rows, :, columns] = k[:, :, 0]  # row r's keys at its own column
            values[rows, :, columns] = v[:, :, 0]
            y = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[r : r + 1],
                        keys[r : r + 1, :, :w],
                        values[r : r + 1, :, :w],
                        scale=p.scale,
                        enable_gqa=gqa,
                    )
                    for r, w in enumerate(widths)
                ]
            )
        y = y.view(b, q_width)
        h = blk.out(y.to(p.cdtype) if recast else y)
        x = x + h if blk.pre_norm else blk.attn_norm(x + h)
        if blk.cross_q is not None:
            ck, cv = cache.cross[i]
            h = blk.cross_norm(x) if blk.pre_norm else x
            q = blk.cross_q(h)
            q = (q.to(p.kv_dtype) if recast else q).view(b, n_head, 1, hd)
            y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cross_mask, scale=p.scale, enable_gqa=gqa)
            y = y.view(b, q_width)
            h = blk.cross_out(y.to(p.cdtype) if recast else y)
            x = x + h if blk.pre_norm else blk.cross_norm(x + h)
        h = blk.mlp_norm(x) if blk.pre_norm else x
        h = blk.fc_in(h)
        if blk.gated:
            gate, up = h.chunk(2, dim=-1)
            h = blk.act(gate) * up
        else:
            h = blk.act(h)
        h = blk.fc_out(h)
        x = x + h if blk.pre_norm else blk.mlp_norm(x + h)
    if rows is None:
        cache.advance(1)
    if p.final_norm is not None:
        x = p.final_norm(x)
    if p.head_transform is not None:
        x = p.head_norm(p.head_act(p.head_transform(x)))
    if p.head_scale != 1.0:
        x = x * p.head_scale
    return p.head(x)
