"""The one call a pre-training loop needs: sources in, resumable batches of packed blocks out.

    data = build_pretraining_data([SourceSpec("wiki/", weight=3), SourceSpec("crawl/", weight=1)],
                                  tokenizer, block_size=1024, batch_size=8, seed=0)
    for step, blocks in zip(range(max_steps), data):   # blocks: list of 8 LongTensor (1024,)
        batch = objective(blocks)                      # e.g. build_objective("clm", tokenizer)
        ...
    checkpoint["data"] = data.state_dict()             # resume: data.load_state_dict(...)

One source and a weighted mixture go the same way: each source is tokenized into its own cached
TokenStore (changing one source does not re-tokenize the others), packed into blocks, and a
MixtureSampler picks the source of every block by weight.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.data.mixture import MixtureSampler
from plmkit.data.packing import PackedDataset
from plmkit.data.sources import SourceSpec
from plmkit.data.store import TokenStore
from plmkit.errors import ConfigError


@dataclass
class PretrainingData:
    """Packed datasets (one per source) and the sampler that mixes them; iterate for batches forever."""

    sources: list[SourceSpec]
    stores: list[TokenStore]
    datasets: list[PackedDataset]
    sampler: MixtureSampler

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> list[torch.Tensor]:
        """This rank's next batch: `batch_size` LongTensor blocks of shape (block_size,)."""
        return [self.datasets[k][i] for k, i in self.sampler.next_batch()]

    @property
    def num_tokens(self) -> list[int]:
        """Tokens per source (in packed blocks)."""
        return [len(d) * d.block_size for d in self.datasets]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_pretraining_data(sources: Sequence[SourceSpec | Mapping[str, Any] | str], tokenizer: Any,
                           block_size: int, batch_size: int, seed: int = 0,
                           cache_dir: str | Path | None = None, *, shuffle: bool = True, rank: int = 0,
                           world_size: int = 1, progress: bool | None = None) -> PretrainingData:
    """Tokenize (or reuse the cache of) every source, pack it into `block_size` blocks and mix the
    sources by weight. `sources` items may be SourceSpecs, dicts of their fields (from YAML) or paths."""
    specs = [_as_spec(s) for s in sources]
    if not specs:
        raise ConfigError("no data sources given; set data: to a list of {path: ..., weight: ...}")
    datasets = [packed_blocks(spec, tokenizer, block_size, cache_dir, progress=progress) for spec in specs]
    stores = [dataset.store for dataset in datasets]
    sampler = MixtureSampler(datasets, [s.weight for s in specs], batch_size, seed=seed, shuffle=shuffle,
                             rank=rank, world_size=world_size)
    return PretrainingData(specs, stores, datasets, sampler)


def packed_blocks(spec: SourceSpec, tokenizer: Any, block_size: int, cache_dir: str | Path | None = None,
                  *, progress: bool | None = None) -> PackedDataset:
    """One source tokenized into its cached store and packed into blocks. Documents are separated by
    the tokenizer's eos, or by [SEP] for tokenizers without one (BERT-style vocabularies)."""
    if tokenizer.eos_id is not None:
        return PackedDataset(TokenStore.build([spec], tokenizer, cache_dir, progress=progress), block_size)
    if tokenizer.sep_id is None:
        raise ConfigError("the tokenizer has neither an eos nor a sep token to separate documents; add one")
    store = TokenStore.build([spec], tokenizer, cache_dir, add_eos=False, progress=progress)
    return PackedDataset(store, block_size, eos_id=tokenizer.sep_id)


def _as_spec(source: SourceSpec | Mapping[str, Any] | str) -> SourceSpec:
    if isinstance(source, SourceSpec):
        return source
    if isinstance(source, (str, Path)):
        return SourceSpec(str(source))
    from plmkit.config import from_dict  # errors that name the bad key, as for every config

    return from_dict(SourceSpec, dict(source))
