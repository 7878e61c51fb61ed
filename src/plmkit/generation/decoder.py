"""The decoder: runs a model for generation, step by step, without changing it.

The prompt runs through the model once ("prefill"); after that each step feeds one token per row and
reuses the cached keys/values. Batched decoder-only prompts are LEFT padded so that every row's next
token sits in the last column; positions count real tokens only (cumsum(mask) - 1).

Nothing here writes to the model, so threads (a server's requests, PPO rollouts beside training) may
decode from one model at once. Each model call
  * skips the model's input checks (`check_inputs=False`): the prompt was checked once up front, and a
    per-step check would cost a device sync;
  * runs with dropout off through `dropout_off()`, a context variable private to the calling thread:
    the model's train/eval flag stays as the caller left it (flipping it would switch dropout off for
    a training step running beside us, and back on under another decoding thread);
  * keeps keys/values in a preallocated StaticCache (model/kv_cache.py), written in place per step; on
    the CPU it is fp32 also for bf16 / int8 decode weights (generation/weights.py, cache_dtype).
After the prefill, a step of a stock model runs the fast pass of generation/engine.py (prepared
weights in the layout and dtype that read fastest, `GenerationConfig.dtype`); any other model (prompt
tuning's wrapper, prefix tuning's hooks) steps through its own forward, on the same cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from plmkit.generation import engine
from plmkit.generation.weights import MATVEC_ROWS, DecodeDtype, compute_dtype, prefill_autocast
from plmkit.model import masks
from plmkit.model.dropout import dropout_off
from plmkit.model.kv_cache import StaticCache
from plmkit.model.pretrained import LMHead, ModelOutput

FAST_STEPS = True  # False: every step through the model's forward (tests compare the two)


def _only_lm_head(model: nn.Module) -> LMHead | None:
    """The model's LM head when it has exactly one (a PEFT wrapper's is inside its base model)."""
    heads = [m for m in model.modules() if isinstance(m, LMHead)]
    return heads[0] if len(heads) == 1 else None


@dataclass
class Timings:
    """Where a generate call's time went (seconds, perf_counter; on CUDA after a synchronize)."""

    prepare_seconds: float = 0.0  # decode-time weights (generation/weights.py); ~0 once cached
    prefill_seconds: float = 0.0  # the prompt's forward (encoder + first decoder call for seq2seq)
    decode_seconds: float = 0.0  # every step after it, sampling included
    steps: int = 0  # decode steps run (new tokens - 1: the prefill gives the first token)

    def record(self, decoder: Decoder, decode_seconds: float) -> None:
        self.prepare_seconds, self.prefill_seconds = decoder.prepare_seconds, decoder.prefill_seconds
        self.decode_seconds, self.steps = decode_seconds, decoder.steps


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":  # timings only: wait for the queued kernels
        torch.cuda.synchronize(device)


class Decoder:
    """`prefill()` once, then `step(tokens)` per new token, both returning next-token logits (B, V).
    Holds the KV cache and everything that grows with it (padding mask, next positions);
    `reorder(index)` selects rows for beam search. `prefill_seconds` / `prepare_seconds` time the
    prompt's forward and the one-off weight preparation."""

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        dtype: DecodeDtype = "fp32",
        rows: int | None = None,
    ) -> None:
        self.model = model
        self.family = model.config.family
        self.dtype = dtype
        self.input_ids = input_ids
        self.device = input_ids.device
        b, t = input_ids.shape
        # an all-ones mask carries no information; without one the model takes its fast causal path
        self.mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        start = time.perf_counter()
        self.plan = engine.plan(model, dtype, rows or b) if FAST_STEPS else None
        self.prepare_seconds = time.perf_counter() - start
        self.prefill_seconds = 0.0
        self.steps = 0
        # the cache's dtype (weights.cache_dtype); the fallback steps through the model's forward, in its own
        kv_dtype = self.plan.kv_dtype if self.plan is not None else compute_dtype(model, "fp32")
        config = model.config
        seq2seq = self.family == "seq2seq"
        capacity = (1 if seq2seq else t) + max_new_tokens
        self.cache = StaticCache(
            config.decoder_layers if seq2seq else config.n_layer,
            b,
            config.kv_heads,
            config.dim_per_head,
            capacity,
            kv_dtype,
            self.device,
        )
        self.memory: torch.Tensor | None = None  # seq2seq encoder output (B, S, C)
        self.cross_mask: torch.Tensor | None = None  # seq2seq, fast steps: additive (B, 1, 1, S)
        self.positions: torch.Tensor | None = None  # (B, 1) position of the next token
        # padded decoder-only prompts: the keys' padding, preallocated for every step (ones after the prompt)
        self.key_mask: torch.Tensor | None = None  # (B, capacity) long, for the model's forward
        self.additive: torch.Tensor | None = None  # (B, 1, 1, capacity) for the fast steps
        if self.mask is not None and not seq2seq:
            self.key_mask = self.mask.new_ones(b, capacity)
            self.key_mask[:, :t] = self.mask
            self.additive = masks.to_additive(masks.padding(self.key_mask), kv_dtype)
        self.bias = None  # T5 relative bias of the fast steps (1, H, 1, capacity)
        if self.plan is not None:
            self.bias = engine.relative_bias_table(self.plan.stack, capacity, kv_dtype)
        self.head = _only_lm_head(model)
        self.head_weight = None
        if self.head is not None and self.plan is None and b <= MATVEC_ROWS:
            self.head_weight = self.head.transposed_weight()  # (C, V): the faster layout for a few rows

    def _run(self, **kwargs) -> torch.Tensor:
        """One forward call -> logits (B, V) at the last position; the cache fills in place."""
        with dropout_off():
            out: ModelOutput = self.model(
                check_inputs=False,
                compute_logits=self.head is None,
                use_cache=True,
                past_key_values=self.cache,
                **kwargs,
            )
            if self.head is None:
                return out.logits[:, -1]
            h = out.hidden_states[:, -1]  # (B, C)
            return self.head(h, self.head_weight)

    def prefill(self) -> torch.Tensor:
        start = time.perf_counter()
        with prefill_autocast(self.model, self.dtype):  # bf16 decoding: a bf16 prompt forward where fast
            logits = self._prefill().float()
        sync_device(self.device)
        self.prefill_seconds = time.perf_counter() - start
        return logits

    def _prefill(self) -> torch.Tensor:
        model, ids = self.model, self.input_ids
        b, t = ids.shape
        if self.family == "seq2seq":
            with dropout_off():
                self.memory = model.encode(input_ids=ids, attention_mask=self.mask, check_inputs=False)
            if self.mask is not None and self.plan is not None:
                self.cross_mask = masks.to_additive(masks.padding(self.mask), self.plan.kv_dtype)
            self.positions = torch.zeros(b, 1, dtype=torch.long, device=self.device)
            start = torch.full((b, 1), model.config.decoder_start_id, dtype=torch.long, device=self.device)
            return self._decode(start)
        kwargs = {}
        if self.family == "prefix":  # the whole (padded) prompt is the bidirectional prefix
            kwargs["prefix_lengths"] = torch.full((b,), t, device=self.device)
        if self.mask is not None:
            position_ids = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs.update(attention_mask=self.mask, position_ids=position_ids)
            self.positions = position_ids[:, -1:] + 1
        else:
            self.positions = torch.full((b, 1), t, dtype=torch.long, device=self.device)
        return self._run(input_ids=ids, **kwargs)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, V) for the token after them."""
        self.steps += 1
        if self.plan is not None:
            return self._fast_step(tokens)
        if self.family == "seq2seq":
            return self._decode(tokens[:, None])
        kwargs = {}
        if self.mask is not None:  # padded batch: the mask covers one more column, positions one more
            # the caller's columns: a wrapper may hold more in the cache (prompt tuning's prompt)
            columns = self.input_ids.shape[1] + self.steps
            kwargs.update(attention_mask=self.key_mask[:, :columns], position_ids=self.positions)
        logits = self._run(input_ids=tokens[:, None], **kwargs)
        self.positions += 1
        return logits

    def _fast_step(self, tokens: torch.Tensor) -> torch.Tensor:
        length = self.cache.length + 1  # keys after this step
        mask = None if self.additive is None else self.additive[..., :length]
        if self.bias is not None:
            bias = self.bias[..., self.bias.shape[-1] - length :]
            mask = bias if mask is None else mask + bias
        with dropout_off():
            logits = engine.step(self.plan, self.cache, tokens, self.positions, mask, self.cross_mask)
        self.positions += 1
        return logits

    def _decode(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        logits = self._run(
            attention_mask=self.mask,
            decoder_input_ids=decoder_input_ids,
            encoder_hidden_states=self.memory,
        )
        self.positions += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        for name in ("mask", "key_mask", "additive", "positions", "memory", "cross_mask"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
