"""The static KV cache of decoding: keys and values preallocated once, written in place at each step.

A list cache (per block a (k, v) tuple, `torch.cat` at every step) allocates and copies the whole
past on every token; decoding near the memory-bandwidth limit cannot afford that. StaticCache holds
(B, n_kv, max_length, hd) buffers per block: Attention writes a step's keys at column `length`
(StaticLayer.write) and attends over the filled columns; the Stack advances `length` once per call.
A model takes it as `past_key_values` from the prefill call on (model/stack.py, model/attention.py);
plmkit.generation also writes into it directly from its own step loop.
"""

from __future__ import annotations

import torch


class StaticLayer:
    """One block's slice of a StaticCache: `write(k, v)` stores the new keys/values in place at the
    cache's length and returns every filled column; `cross` holds the cross-attention k, v (computed once)."""

    def __init__(self, cache: StaticCache, index: int) -> None:
        self.cache, self.index = cache, index

    @property
    def cross(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.cache.cross[self.index]

    @cross.setter
    def cross(self, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.cache.cross[self.index] = tuple(t.to(self.cache.dtype) for t in kv)

    def write(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, t = self.cache.length, k.shape[2]
        keys, values = self.cache.room(self.index, start + t, k.shape[1])
        keys[:, :, start : start + t].copy_(k)
        values[:, :, start : start + t].copy_(v)
        if start == 0:  # the prompt attends to its own exact keys (the cache may hold them rounded)
            return k, v
        return keys[:, :, : start + t].to(k.dtype), values[:, :, : start + t].to(v.dtype)

    def __getitem__(self, i: int) -> torch.Tensor:  # (k, v[, cross k, cross v]) like a list cache's entry
        length = self.cache.length
        parts = (self.cache.keys[self.index][:, :, :length], self.cache.values[self.index][:, :, :length])
        return (parts + (self.cross or ()))[i]

    def __len__(self) -> int:
        return 2 if self.cross is None else 4


class StaticCache:
    """A preallocated KV cache for decoding: per block, keys and values (B, n_kv, max_length, hd) written
    in place (no torch.cat, no allocation per step); `length` columns are filled. Pass it as
    `past_key_values` from the first (prefill) call on: each Stack call writes its tokens at `length`
    and advances it. Falsy while empty, so code that asks "is there a past?" sees none before prefill."""

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, n_kv_head, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.spare: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # beam search's reorder
        self.dtype, self.length = dtype, 0
        self.layers = [StaticLayer(self, i) for i in range(n_layer)]

    def __getitem__(self, i: int) -> StaticLayer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __bool__(self) -> bool:
        return self.length > 0

    def room(self, i: int, needed: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block i's buffers, grown (doubled, the filled columns copied) when they hold fewer than
        `needed` columns: a wrapper may add tokens the caller did not count (prompt tuning's prompt).
        Before the first write they take the `heads` the block really has: a tensor-parallel rank holds
        n_kv_head / T of them."""
        keys, values = self.keys[i], self.values[i]
        if keys.shape[1] != heads and self.length == 0:
            shape = (keys.shape[0], heads, keys.shape[2], keys.shape[3])
            keys, values = self.keys[i], self.values[i] = keys.new_zeros(shape), values.new_zeros(shape)
            self.spare = None
        if keys.shape[2] < needed:
            size = max(needed, 2 * keys.shape[2])
            grown = []
            for old in (keys, values):
                new = old.new_zeros((*old.shape[:2], size, old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                grown.append(new)
            keys, values = self.keys[i], self.values[i] = grown
            self.spare = None
        return keys, values

    def advance(self, t: int) -> None:
        self.length += t

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search). Same batch size: gathered into spare buffers that then swap
        with the live ones (no allocation after the first reorder); another size: new buffers."""
        n = len(index)
        if self.spare is None or self.spare[0][0].shape[0] != n:
            self.spare = tuple(
                [b.new_empty((n, *b.shape[1:])) for b in kind] for kind in (self.keys, self.values)
            )
        spare_k, spare_v = self.spare
        for i in range(len(self.keys)):
            torch.index_select(self.keys[i], 0, index, out=spare_k[i])
            torch.index_select(self.values[i], 0, index, out=spare_v[i])
            if self.cross[i] is not None:
                self.cross[i] = tuple(t.index_select(0, index) for t in self.cross[i])
        same = n == self.keys[0].shape[0]
        self.spare = (self.keys, self.values) if same else None
        self.keys, self.values = spare_k, spare_v
