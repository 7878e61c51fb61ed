"""A deterministic, resumable batch sampler.

Epoch e visits the items in a permutation drawn from (seed, e) alone, so any batch can be recomputed
from two integers: the epoch and the position in it. `state_dict()` holds just those (plain ints:
JSON or torch.save both work), and after `load_state_dict()` the next batch is exactly the one an
uninterrupted run would have drawn, across epoch boundaries too.

    sampler = ResumableSampler(len(dataset), batch_size=8, seed=0)
    for step, indices in zip(range(max_steps), sampler):    # iterates forever; epochs roll over
        batch = [dataset[i] for i in indices]
    checkpoint["sampler"] = sampler.state_dict()           # after the step that used `indices`

Data-parallel training: every rank makes the same sampler with its own `rank` and `world_size`;
each step consumes `batch_size * world_size` items of the permutation and a rank takes its slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plmkit.errors import ConfigError


def derive_seed(*words: int) -> int:
    """A well-mixed 64-bit seed from several integers (seed, epoch, ...): nearby inputs give unrelated
    streams, unlike seed + epoch."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


class ResumableSampler:
    """Batches of item indices, epoch after epoch, from a seeded permutation per epoch.

    drop_last=True: an epoch ends when fewer than a full (global) batch remains; those items are
    not used in that epoch (the next permutation differs, so no item is always left out).
    drop_last=False: the last batch of an epoch is short (single process only).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"rank={rank}, world_size={world_size}"
            )
        if num_items < 1:
            raise ConfigError("cannot sample from an empty dataset")
        if drop_last and num_items < batch_size * world_size:
            raise ConfigError(
                f"the dataset has {num_items} items, fewer than one batch of "
                f"{batch_size * world_size}; add data or lower the batch size"
            )
        if not drop_last and world_size > 1:
            raise ConfigError(
                "drop_last=False would give ranks batches of different sizes; use it in one process"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch, self.position = 0, 0  # position: items of this epoch's permutation already used
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cache

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch `epoch` (a function of seed and epoch only)."""
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
                order = torch.randperm(self.num_items, generator=generator)
            else:
                order = torch.arange(self.num_items)
            self._order = (epoch, order)
        return self._order[1]

    @property
    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        return self.num_items // global_batch if self.drop_last else -(-self.num_items // global_batch)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def next_batch(self) -> list[int]:
        """This rank's indices of the next batch."""
        global_batch = self.batch_size * self.world_size
        remaining = self.num_items - self.position
        if remaining <= 0 or (self.drop_last and remaining < global_batch):
            self.epoch, self.position = self.epoch + 1, 0
        chunk = self.permutation(self.epoch)[self.position : self.position + global_batch]
        self.position += len(chunk)
        return chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def take(self, n: int) -> list[int]:
        """The next `n` items of the item stream, crossing epochs as needed (all ranks' items; used by
        MixtureSampler, which draws per item)."""
        items: list[int] = []
        while len(items) < n:
            if self.position >= self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
            chunk = self.permutation(self.epoch)[self.position : self.position + n - len(items)]
            self.position += len(chunk)
            items.extend(chunk.tolist())
        return items

    # ---- resumability -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_items", "shuffle"):
            if state[key] != getattr(self, key):
                raise ConfigError(
                    f"cannot resume the sampler: the checkpoint has {key}={state[key]!r}, this run "
                    f"{getattr(self, key)!r} (resuming needs the same data and seed)"
                )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
