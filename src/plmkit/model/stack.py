"""The Transformer body shared by every family: one block, one stack.

Block = [norm] self-attention [norm] (+ [norm] cross-attention [norm]) + [norm] MLP or MoE [norm]
Stack = embeddings -> N blocks -> final norm     (one per family; seq2seq has two)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from plmkit.model import masks
from plmkit.model.attention import Attention
from plmkit.model.config import ModelConfig
from plmkit.model.dropout import Dropout
from plmkit.model.kv_cache import StaticCache, StaticLayer
from plmkit.model.layers import Embeddings, RelativePositionBias, Rotary, make_norm
from plmkit.model.moe import make_feed_forward
from plmkit.model.padding import PaddingIndex

Cache = list[tuple[torch.Tensor, ...]]  # per block: (k, v) or (k, v, cross k, cross v), each (B, H_kv, T, hd)


def reorder_cache(past_key_values: Cache, index: torch.Tensor) -> Cache:
    """Select batch rows of every cached tensor (beam search keeps the surviving beams)."""
    if isinstance(past_key_values, StaticCache):
        past_key_values.reorder(index)
        return past_key_values
    return [tuple(t.index_select(0, index) for t in layer) for layer in past_key_values]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, cross: bool = False, index: int = 0) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = Attention(config)
        self.attn_norm = make_norm(config)
        self.cross_attn = Attention(config, cross=True) if cross else None
        self.cross_norm = make_norm(config) if cross else None
        self.mlp = make_feed_forward(config, index)  # an MLP, or routed experts (model/moe.py)
        self.mlp_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> tuple[torch.Tensor, tuple | None]:
        """Pre-norm: x + f(norm(x)). Post-norm: norm(x + f(x))."""
        out = sublayer(norm(x) if self.pre_norm else x)
        h, cache = out if isinstance(out, tuple) else (out, None)
        x = x + self.dropout(h)
        return (x if self.pre_norm else norm(x)), cache

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: tuple[torch.Tensor, ...] | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: tuple[torch.Tensor, ...] | None = None,  # prefix-tuning (k, v[, cross k, cross v])
        unpadded: PaddingIndex | None = None,  # x is (N, C), the real tokens only (model/padding.py)
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        static = isinstance(cache, StaticLayer)
        self_cache = cache if static else cache[:2] if cache is not None else None
        self_prefix = prefix[:2] if prefix is not None else None
        x, new_cache = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(
                h, mask, rotary, self_cache, is_causal=is_causal, prefix=self_prefix, unpadded=unpadded
            ),
        )
        if self.cross_attn is not None:
            if static:
                cross_cache = cache.cross
            else:
                cross_cache = cache[2:] if cache is not None and len(cache) == 4 else None
            cross_prefix = prefix[2:] if prefix is not None and len(prefix) == 4 else None
            x, cross = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(
                    h, memory_mask, cache=cross_cache, memory=memory, prefix=cross_prefix
                ),
            )
            if static and cross_cache is None:  # the encoder's keys/values, computed once
                cache.cross = cross
            new_cache = new_cache + cross
        x, _ = self._residual(x, self.mlp_norm, self.mlp)
        return x, new_cache


class Stack(nn.Module):
    """Embeddings, blocks and the final norm. Owns the per-stack position machinery (rotary, T5 bias).

    `prefix` (prefix-tuning) gives each block extra attention keys/values; plmkit.peft.prefix passes
    it with a forward pre-hook, so the family models need not know about it."""

    def __init__(
        self,
        config: ModelConfig,
        n_layer: int,
        cross: bool = False,
        bidirectional: bool = True,
        tokens: nn.Embedding | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        if tokens is not None:  # seq2seq: encoder and decoder share one token embedding
            self.embed.tokens = tokens
        self.blocks = nn.ModuleList(Block(config, cross, i) for i in range(n_layer))
        self.rotary = Rotary(config.dim_per_head, config.rope_theta) if config.position == "rotary" else None
        self.relative_bias = (
            RelativePositionBias(config, bidirectional) if config.position == "relative" else None
        )
        self.final_norm = make_norm(config) if config.pre_norm and config.final_norm else None
        self.gradient_checkpointing = False
        self.skip_padding = True  # training computes on the real tokens only (padding_index)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        allowed: torch.Tensor | None,  # boolean (B|1, 1, T, T_past+T); None = no mask (or SDPA causal)
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        block_position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        memory: torch.Tensor | None = None,
        memory_allowed: torch.Tensor | None = None,
        prefix: list[tuple[torch.Tensor, ...]] | None = None,  # per block; plmkit.peft.prefix fills it
    ) -> tuple[torch.Tensor, Cache]:
        b, t = input_ids.shape
        static = isinstance(past_key_values, StaticCache)
        if static:
            past = past_key_values.length
        else:
            past = past_key_values[0][0].shape[2] if past_key_values else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(b, t)
        x = self.embed(input_ids, position_ids, token_type_ids, block_position_ids)  # (B, T, C)
        mask, memory_mask, rotary, fast_causal = self.attention_inputs(
            x, allowed, is_causal, position_ids, past, memory_allowed
        )
        unpadded = self.padding_index(allowed, past_key_values, memory, prefix)
        if unpadded is not None:
            x = unpadded.rows(x)  # (N, C)
        new_cache: Cache = []
        for i, block in enumerate(self.blocks):
            cache = past_key_values[i] if static or past_key_values else None
            layer_prefix = prefix[i] if prefix is not None else None
            x, layer_cache = self.run_block(
                block, x, mask, rotary, cache, memory, memory_mask, fast_causal, layer_prefix, unpadded
            )
            if layer_cache is not None:
                new_cache.append(layer_cache)
        if static:  # every block wrote its t columns at `past`
            past_key_values.advance(t)
            new_cache = past_key_values
        if self.final_norm is not None:
            x = self.final_norm(x)
        return (x if unpadded is None else unpadded.pad(x)), new_cache

    def padding_index(
        self,
        allowed: torch.Tensor | None,
        past_key_values: Cache | None,
        memory: torch.Tensor | None,
        prefix: list[tuple[torch.Tensor, ...]] | None,
    ) -> PaddingIndex | None:
        """Where the real tokens are, when this forward computes on them alone (model/padding.py): a
        training forward with gradients of a batch with key padding only (a bidirectional stack), no
        cache, memory, prefix or experts. Evaluation keeps the padded layout (its outputs at the padding
        positions equal transformers')."""
        if not (self.skip_padding and self.training and torch.is_grad_enabled()) or allowed is None:
            return None
        if past_key_values or memory is not None or prefix is not None or self.config.n_experts is not None:
            return None
        return PaddingIndex.from_key_mask(allowed)

    def attention_inputs(
        self,
        x: torch.Tensor,  # (B, T, C): the hidden states entering the blocks
        allowed: torch.Tensor | None,
        is_causal: bool,
        position_ids: torch.Tensor,  # (B, T)
        past: int = 0,
        memory_allowed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None, bool]:
        """What every block takes besides x: (the additive self-attention mask, the additive memory mask,
        the rotary (cos, sin), whether SDPA builds the causal mask itself). A pipeline stage
        (plmkit.model.stages) computes them again from its own input."""
        t = x.shape[1]
        mask = None
        if self.relative_bias is not None:
            if allowed is None and is_causal:
                allowed = masks.causal(t, past + t, past, x.device)
            mask = self.relative_bias(t, past + t, past).to(x.dtype)  # (1, H, T, T_k)
            if allowed is not None:
                mask = mask + masks.to_additive(allowed, x.dtype)
        elif allowed is not None:
            mask = masks.to_additive(allowed, x.dtype)
        memory_mask = None if memory_allowed is None else masks.to_additive(memory_allowed, x.dtype)
        rotary = self.rotary.cos_sin(position_ids, x.dtype) if self.rotary is not None else None
        return mask, memory_mask, rotary, is_causal and mask is None  # SDPA builds the causal mask itself

    def run_block(self, block: Block, x: torch.Tensor, *args) -> tuple[torch.Tensor, tuple | None]:
        """One block's forward: (its output, its cache; None under gradient checkpointing, where training
        never reads the cache back and holding every layer's k, v would keep most of what it frees)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            x, _ = checkpoint(block, x, *args, use_reentrant=False)
            return x, None
        return block(x, *args)
