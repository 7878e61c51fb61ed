"""Corpus mixtures weighted by quality, as GPT-3 sampled its training data.

Every item of a batch first picks its source with probability weight / sum(weights), then takes the
next item of that source's own ResumableSampler. A small high-quality source is thus revisited for
several epochs while a big crawl is not even finished once. With packed blocks (all `block_size`
tokens) the sampled token shares match the weights; with variable-length items the item shares do.

    sampler = MixtureSampler([wiki_blocks, crawl_blocks], weights=[3, 1], batch_size=8, seed=0)
    for batch in sampler:          # [(source, index), ...]: wiki_blocks[index] when source == 0
        ...

The source choices of step s come from a generator seeded by (seed, s), so `state_dict()` is the
step plus each source's sampler state, and resuming gives exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from typing import Any

import torch

from plmkit.data.sampler import ResumableSampler, derive_seed
from plmkit.errors import ConfigError


class MixtureSampler:
    """Batches of (source, index) pairs from several datasets with weighted, per-item source choice."""

    def __init__(
        self,
        datasets: Sequence[Sized],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(datasets) != len(weights) or not datasets:
            raise ConfigError(
                f"need one weight per dataset, got {len(datasets)} datasets, {len(weights)} weights"
            )
        if any(not (math.isfinite(w) and w > 0) for w in weights):
            raise ConfigError(f"mixture weights must be positive numbers, got {list(weights)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"rank={rank}, world_size={world_size}"
            )
        self.weights = [float(w) for w in weights]
        self.probabilities = torch.tensor(self.weights, dtype=torch.float64) / sum(self.weights)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        # each source walks its own permutations, from its own seed; drop_last is moot per item
        self.samplers = [
            ResumableSampler(len(d), 1, seed=derive_seed(seed, k, 2), shuffle=shuffle, drop_last=False)
            for k, d in enumerate(datasets)
        ]
        self.step = 0

    def __iter__(self):
        while True:
            yield self.next_batch()

    def choose_sources(self, step: int) -> list[int]:
        """The source of each item of global batch `step` (a function of seed and step only)."""
        n = self.batch_size * self.world_size
        if len(self.samplers) == 1:
            return [0] * n
        generator = torch.Generator().manual_seed(derive_seed(self.seed, step, 1))
        return torch.multinomial(self.probabilities, n, replacement=True, generator=generator).tolist()

    def next_batch(self) -> list[tuple[int, int]]:
        """This rank's (source, index) pairs of the next batch."""
        sources = self.choose_sources(self.step)
        self.step += 1
        drawn = [iter(s.take(sources.count(k))) for k, s in enumerate(self.samplers)]
        pairs = [(k, next(drawn[k])) for k in sources]
        return pairs[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    @property
    def epochs(self) -> list[float]:
        """How many passes over each source so far (fractional)."""
        return [s.epoch + s.position / s.num_items for s in self.samplers]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seed": self.seed,
            "weights": list(self.weights),
            "samplers": [s.state_dict() for s in self.samplers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or [float(w) for w in state["weights"]] != self.weights:
            raise ConfigError(
                f"cannot resume the mixture: the checkpoint has seed={state['seed']}, weights="
                f"{state['weights']}; this run seed={self.seed}, weights={self.weights}"
            )
        if len(state["samplers"]) != len(self.samplers):
            raise ConfigError(
                f"cannot resume the mixture: the checkpoint has {len(state['samplers'])} sources, "
                f"this run {len(self.samplers)}"
            )
        for sampler, sub in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(sub)
        self.step = int(state["step"])
