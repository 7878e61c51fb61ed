"""Multi-head / multi-query / grouped-query attention on F.scaled_dot_product_attention, with a KV cache.

One module serves self-attention (q, k, v from the same sequence, one fused projection) and
cross-attention (q from the decoder, k and v from the encoder output). The attention is
softmax(QKᵀ·scale + M)V where M is an additive mask (plus T5's position bias when used).

Prefix-tuning (plmkit.peft.prefix) passes `prefix`: P extra keys and values in front of the real
ones. They are not part of the KV cache, have no position (no rotary, no relative bias: their mask
columns are 0) and every query sees them, whatever the mask of the real keys says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.model import masks
from plmkit.model.config import ModelConfig
from plmkit.model.dropout import dropout_active
from plmkit.model.kv_cache import StaticLayer
from plmkit.model.layers import apply_rotary
from plmkit.model.padding import PaddingIndex


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.cross = cross
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.dim_per_head
        self.scale = config.attention_scale  # None: SDPA's default 1/sqrt(head_dim)
        self.dropout_p = config.attention_dropout
        qkv_bias = config.attention_bias if config.qkv_bias is None else config.qkv_bias
        q_width = self.n_head * self.head_dim
        kv_width = self.n_kv_head * self.head_dim
        if cross:
            self.q = nn.Linear(config.d_model, q_width, bias=qkv_bias)
            self.kv = nn.Linear(config.d_model, 2 * kv_width, bias=qkv_bias)
        else:
            # one fused projection: fewer kernels per step than three separate matmuls
            self.qkv = nn.Linear(config.d_model, q_width + 2 * kv_width, bias=qkv_bias)
        self.out = nn.Linear(q_width, config.d_model, bias=config.attention_bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, hd)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: torch.Tensor | None = None,  # additive (B|1, H|1, T, T_k), or None
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin (B, 1, T, hd)
        cache: tuple[torch.Tensor, torch.Tensor]
        | StaticLayer
        | None = None,  # past k, v (B, n_kv, T_past, hd)
        memory: torch.Tensor | None = None,  # cross-attention: encoder output (B, S, C)
        is_causal: bool = False,  # let SDPA build the causal mask itself (fast path, no explicit mask)
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,  # prefix keys, values (B|1, n_kv, P, hd)
        unpadded: PaddingIndex | None = None,  # x is (N, C), the real tokens: attend in (B, T) layout
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        q_width = self.n_head * self.head_dim
        if self.cross:
            q = self._heads(self.q(x), self.n_head)
            if cache is not None:  # the encoder output does not change while decoding
                k, v = cache
            else:
                k, v = self.kv(memory).split(self.n_kv_head * self.head_dim, dim=-1)
                k, v = self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
        else:
            kv_width = self.n_kv_head * self.head_dim
            qkv = self.qkv(x)  # (B, T, .) or (N, .)
            if unpadded is not None:
                qkv = unpadded.pad(qkv)  # (B, T, .), zeros at the padding (masked keys)
            q, k, v = qkv.split([q_width, kv_width, kv_width], dim=-1)
            q, k, v = (
                self._heads(q, self.n_head),
                self._heads(k, self.n_kv_head),
                self._heads(v, self.n_kv_head),
            )
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if isinstance(cache, StaticLayer):  # preallocated: written in place at the cache's length
                k, v = cache.write(k, v)
            elif cache is not None:
                k = torch.cat((cache[0], k), dim=2)
                v = torch.cat((cache[1], v), dim=2)
        new_cache = (k, v)  # real tokens only: the prefix is added again at every call
        if prefix is not None:
            k, v, mask = with_prefix(prefix, k, v, mask, is_causal, q.shape[2], q.dtype)
            is_causal = False  # the mask is explicit now
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout_p if dropout_active(self.training) else 0.0,
            is_causal=is_causal and mask is None,
            scale=self.scale,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, H, T, hd)
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, q_width)
        return self.out(y if unpadded is None else unpadded.rows(y)), new_cache


def with_prefix(
    prefix: tuple[torch.Tensor, torch.Tensor],
    k: torch.Tensor,  # (B, n_kv, T_k, hd)
    v: torch.Tensor,
    mask: torch.Tensor | None,  # additive or boolean (B|1, H|1, T_q, T_k), or None
    is_causal: bool,
    t_q: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """k, v with the P prefix keys/values in front (B, n_kv, P + T_k, hd), and the mask with P leading
    columns that every query may attend to. SDPA's is_causal is aligned top-left, which is wrong once
    there are more keys than queries, so a causal mask is spelled out here (bottom-right aligned: the
    last query sees every real key)."""
    prefix_k, prefix_v = prefix
    b, p, t_k = k.shape[0], prefix_k.shape[2], k.shape[2]
    k = torch.cat((prefix_k.to(k.dtype).expand(b, -1, -1, -1), k), dim=2)
    v = torch.cat((prefix_v.to(v.dtype).expand(b, -1, -1, -1), v), dim=2)
    if mask is None and is_causal:
        mask = masks.to_additive(masks.causal(t_q, t_k, t_k - t_q, k.device), dtype)
    if mask is not None:
        see_prefix = True if mask.dtype == torch.bool else 0.0  # allowed / additive 0 (no position bias)
        mask = torch.cat((mask.new_full((*mask.shape[:-1], p), see_prefix), mask), dim=-1)
    return k, v, mask


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """Explicit softmax(QKᵀ·scale + M)V, the definition SDPA must match (used by tests)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if k.shape[1] != q.shape[1]:  # grouped-query: repeat each kv head for its query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1) @ v
