"""The training order of a fine-tuning run: the train features as one stream of shuffled epochs.

Epoch e is a permutation drawn from (seed, e); the stream is epoch 0, then epoch 1, ..., and a batch is
the next `batch_size` indices of the stream, so every batch is full (the last rows of an epoch open the
next batch) and no row is dropped. The state is one number, the stream position, so a resumed run draws
exactly the batches the uninterrupted one would have drawn.
"""

from __future__ import annotations

from typing import Any

import torch


class EpochBatches:
    def __init__(self, n_items: int, batch_size: int, seed: int = 0) -> None:
        if n_items < 1:
            raise ValueError("EpochBatches needs at least one item")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.position = 0  # indices drawn so far
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    @property
    def epochs(self) -> float:
        """Epochs drawn so far (fractional)."""
        return self.position / self.n_items

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_items, generator=generator)
        return self._order

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(self.position, self.n_items)
            take = min(self.batch_size - len(out), self.n_items - offset)
            out.extend(self._permutation(epoch)[offset : offset + take].tolist())
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "n_items": self.n_items, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_items"] != self.n_items or state["seed"] != self.seed:
            from plmkit.errors import CheckpointError

            raise CheckpointError(
                f"the checkpoint was trained on {state['n_items']} train features with seed {state['seed']}, "
                f"this run has {self.n_items} with seed {self.seed}; resume with the same data and seed"
            )
        self.position = int(state["position"])
