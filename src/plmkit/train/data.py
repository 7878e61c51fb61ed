"""The recipe's data: training blocks from the recipe's sources (one corpus or a weighted mixture),
and a validation stream (its own sources, or held-out documents)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from plmkit.data.sources import SourceSpec
from plmkit.errors import ConfigError
from plmkit.recipes.config import RecipeConfig


class BlockRange:
    """Blocks [start, stop) of a packed dataset: how a corpus is split into training and held-out parts."""

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[self.start + i]


class TrainData:
    """An endless, resumable stream of batches of token blocks (lists of LongTensor (block_size,))."""

    def __init__(self, datasets: list[Any], sampler: Any, description: str) -> None:
        self.datasets = datasets
        self.sampler = sampler
        self.description = description

    def next_batch(self) -> list[torch.Tensor]:
        return [self.datasets[k][i] for k, i in self.sampler.next_batch()]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def describe(self) -> str:
        return self.description


def iter_source_texts(sources: list[SourceSpec]) -> Iterator[str]:
    """Document texts of the sources (for training a tokenizer)."""
    from plmkit.data import iter_documents

    for source in sources:
        for document in iter_documents(source):
            yield document.text


def _packed(sources: list[SourceSpec], tokenizer: Any, config: RecipeConfig) -> list[Any]:
    from plmkit.data import packed_blocks

    return [packed_blocks(s, tokenizer, config.data.block_size, config.data.cache_dir) for s in sources]


def build_train_data(
    config: RecipeConfig, tokenizer: Any, batch_size: int | None = None
) -> tuple[TrainData, Callable[[int], Iterator[list[torch.Tensor]]] | None]:
    """Training stream over the recipe's sources (mixed by weight) and a validation batch generator:
    the validation sources, or else the last `validation_fraction` of every source's blocks.
    `batch_size`: blocks per batch (default train.batch_size; several processes draw all ranks' rows)."""
    from plmkit.data import MixtureSampler

    if not config.data.sources:
        raise ConfigError("the recipe has no data.sources; add e.g. data.sources=[{path: corpus.txt}]")
    datasets = _packed(config.data.sources, tokenizer, config)
    if config.data.validation:
        train_sets, val_sets = datasets, _packed(config.data.validation, tokenizer, config)
    else:
        train_sets, val_sets = [], []
        for dataset in datasets:
            held_out = int(len(dataset) * config.data.validation_fraction)
            if held_out == 0 or held_out == len(dataset):
                train_sets.append(dataset)  # too small to split: no validation from this source
                continue
            train_sets.append(BlockRange(dataset, 0, len(dataset) - held_out))
            val_sets.append(BlockRange(dataset, len(dataset) - held_out, len(dataset)))
    weights = [s.weight for s in config.data.sources]
    batch_size = batch_size or config.train.batch_size
    sampler = MixtureSampler(train_sets, weights, batch_size, seed=config.seed)
    blocks = sum(len(d) for d in train_sets)
    description = (
        f"{len(train_sets)} source(s), {blocks:,} training blocks of {config.data.block_size} tokens"
        + (f", {sum(len(v) for v in val_sets):,} validation blocks" if val_sets else ", no validation")
    )
    train = TrainData(train_sets, sampler, description)
    if not val_sets:
        return train, None

    def validation_batches(max_batches: int) -> Iterator[list[torch.Tensor]]:
        """The first `max_batches` batches of the validation blocks, in order (the same every time)."""
        items = [(d, i) for d in val_sets for i in range(len(d))]
        for start in range(0, min(len(items), max_batches * batch_size), batch_size):
            yield [d[i] for d, i in items[start : start + batch_size]]

    return train, validation_batches
