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
  * returns hidden states only (`compute_logits=False`): the LM head then reads the last position,
    multiplying by this decoder's own (C, V) copy of the output matrix (LMHead.transposed_weight), the
    layout CPU BLAS is fastest with for a few rows. The copy is made once per generate call, so it is
    never stale when the weights train between calls.
"""

from __future__ import annotations

import torch
from torch import nn

from plmkit.model.dropout import dropout_off
from plmkit.model.pretrained import LMHead, ModelOutput
from plmkit.model.stack import reorder_cache

FAST_HEAD_ROWS = 32  # up to this many rows the transposed output matrix is faster (matrix-vector products)


def _only_lm_head(model: nn.Module) -> LMHead | None:
    """The model's LM head when it has exactly one (a PEFT wrapper's is inside its base model)."""
    heads = [m for m in model.modules() if isinstance(m, LMHead)]
    return heads[0] if len(heads) == 1 else None


class Decoder:
    """`prefill()` once, then `step(tokens)` per new token, both returning next-token logits (B, V).
    Holds the KV cache and everything that grows with it (padding mask, next positions);
    `reorder(index)` selects rows for beam search."""

    def __init__(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        self.model = model
        self.family = model.config.family
        self.input_ids = input_ids
        # an all-ones mask carries no information; without one the model takes its fast causal path
        self.mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        self.past = None
        self.positions: torch.Tensor | None = None  # (B,) position of the next token (padded decoder-only)
        self.memory: torch.Tensor | None = None  # seq2seq encoder output (B, S, C)
        self.head = _only_lm_head(model)
        self.head_weight = self.head.transposed_weight() if self.head is not None else None  # (C, V)

    def _run(self, **kwargs) -> torch.Tensor:
        """One forward call -> logits (B, V) at the last position; keeps the new cache."""
        with dropout_off():
            out: ModelOutput = self.model(
                check_inputs=False, compute_logits=self.head is None, use_cache=True, **kwargs
            )
            self.past = out.past_key_values
            if self.head is None:
                return out.logits[:, -1]
            h = out.hidden_states[:, -1]  # (B, C)
            return self.head(h, self.head_weight if h.shape[0] <= FAST_HEAD_ROWS else None)

    def prefill(self) -> torch.Tensor:
        model, ids = self.model, self.input_ids
        if self.family == "seq2seq":
            with dropout_off():
                self.memory = model.encode(input_ids=ids, attention_mask=self.mask, check_inputs=False)
            start = torch.full(
                (ids.shape[0], 1), model.config.decoder_start_id, dtype=torch.long, device=ids.device
            )
            return self._decode(start)
        kwargs = {}
        if self.family == "prefix":  # the whole (padded) prompt is the bidirectional prefix
            kwargs["prefix_lengths"] = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        if self.mask is not None:
            position_ids = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs.update(attention_mask=self.mask, position_ids=position_ids)
            self.positions = position_ids[:, -1] + 1
        return self._run(input_ids=ids, **kwargs)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, V) for the token after them."""
        if self.family == "seq2seq":
            return self._decode(tokens[:, None])
        kwargs = {}
        if self.mask is not None:  # padded batch: the mask grows by one column, positions by one
            self.mask = torch.cat((self.mask, self.mask.new_ones(self.mask.shape[0], 1)), dim=1)
            kwargs.update(attention_mask=self.mask, position_ids=self.positions[:, None])
            self.positions = self.positions + 1
        return self._run(input_ids=tokens[:, None], past_key_values=self.past, **kwargs)

    def _decode(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self._run(
            attention_mask=self.mask,
            decoder_input_ids=decoder_input_ids,
            encoder_hidden_states=self.memory,
            past_key_values=self.past,
        )

    def reorder(self, index: torch.Tensor) -> None:
        self.past = reorder_cache(self.past, index)
        for name in ("mask", "positions", "memory"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
