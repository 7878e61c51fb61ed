"""The one call a pre-training loop needs: sources in, resumable batches of packed blocks out.

    data = build_pretraining_data([SourceSpec("wiki/", weight=3), SourceSpec("crawl/", weight=1)],
                                  tokenizer, block_size=1024, batch_size=8, seed=0)
    for step, blocks in zip(range(max_steps), data):   # blocks: list of 8 LongTensor (1024,)
        batch = objective(blocks)                      # e.g. build_objective("clm", tokenizer)
        ...
    checkpoint["data"] = data.state_dict()             # resume: data.load_state_dict(...)

One source and a weighted mixture go the same way: each source is tokenized into its own cached
TokenStore (changing one source does not re-tokenize the others), packed into blocks, and a
MixtureSampler picks the source of every block by weight. Validation blocks come from their own
sources, or are held out: the last `validation_fraction` of every training source's blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.data.mixture import MixtureSampler
from plmkit.data.packing import PackedDataset
from plmkit.data.sources import SourceSpec
from plmkit.data.store import TokenStore
from plmkit.errors import ConfigError


class BlockRange:
    """Blocks [start, stop) of a packed dataset: how a source is split into training and held-out parts."""

    def __init__(self, dataset: PackedDataset, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop
        self.block_size = dataset.block_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[self.start + i]


@dataclass
class PretrainingData:
    """Packed datasets (one per source) and the sampler that mixes them; iterate for batches forever.
    `validation`: the validation datasets (their own sources or held-out ranges; empty: none)."""

    sources: list[SourceSpec]
    stores: list[TokenStore]
    datasets: list[PackedDataset | BlockRange]
    sampler: MixtureSampler
    validation: list[PackedDataset | BlockRange] = field(default_factory=list)
    held_out_fraction: float = 0.0  # validation_fraction, when validation blocks are held out

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> list[torch.Tensor]:
        """The next batch: `batch_size` LongTensor blocks of shape (block_size,)."""
        return [self.datasets[k][i] for k, i in self.sampler.next_batch()]

    def validation_batches(self, max_batches: int) -> Iterator[list[torch.Tensor]]:
        """The first `max_batches` batches of the validation blocks, in order (the same every time)."""
        size = self.sampler.batch_size
        items = [(d, i) for d in self.validation for i in range(len(d))]
        for start in range(0, min(len(items), max_batches * size), size):
            yield [d[i] for d, i in items[start : start + size]]

    @property
    def num_tokens(self) -> list[int]:
        """Tokens per source (in packed training blocks)."""
        return [len(d) * d.block_size for d in self.datasets]

    def describe(self) -> str:
        """A summary line, then one line per training and validation source: its documents, tokens and
        mean document length, so that what a document is (a line? a paragraph?) and which files
        validate are visible when a run starts."""
        blocks = sum(len(d) for d in self.datasets)
        block_size = self.datasets[0].block_size if self.datasets else 0
        held_out = sum(len(v) for v in self.validation)
        lines = [
            f"{len(self.datasets)} source(s), {blocks:,} training blocks of {block_size} tokens"
            + (f", {held_out:,} validation blocks" if held_out else ", no validation")
        ]
        for spec, store in zip(self.sources, self.stores):
            weight = f" (weight {spec.weight:g})" if len(self.sources) > 1 else ""
            lines.append(f"  train {_source_counts(store)}{weight}")
        own = [v for v in self.validation if isinstance(v, PackedDataset)]
        for dataset in own:
            lines.append(f"  validation {_source_counts(dataset.store)}")
        split = [v for v in self.validation if isinstance(v, BlockRange)]
        if split:  # a source too small to split holds nothing out
            paths = ", ".join(v.dataset.store.sources[0]["path"] for v in split)
            lines.append(
                f"  validation: the last {self.held_out_fraction * 100:g}% of the blocks of {paths} "
                "(validation_fraction; data.validation names files instead)"
            )
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def build_pretraining_data(
    sources: Sequence[SourceSpec | Mapping[str, Any] | str],
    tokenizer: Any,
    block_size: int,
    batch_size: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    *,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    validation: Sequence[SourceSpec | Mapping[str, Any] | str] = (),
    validation_fraction: float = 0.0,
) -> PretrainingData:
    """Tokenize (or reuse the cache of) every source, pack it into `block_size` blocks and mix the
    sources by weight. `sources` items may be SourceSpecs, dicts of their fields (from YAML) or paths.
    Validation: the `validation` sources, else the last `validation_fraction` of every source's blocks
    (a source too small to split keeps all of them for training)."""
    specs = [_as_spec(s) for s in sources]
    if not specs:
        raise ConfigError("no data sources given; set data.sources to a list of {path: ..., weight: ...}")
    datasets = [packed_blocks(spec, tokenizer, block_size, cache_dir, progress=progress) for spec in specs]
    stores = [dataset.store for dataset in datasets]
    train: list[PackedDataset | BlockRange] = list(datasets)
    held_out: list[PackedDataset | BlockRange] = []
    if validation:
        held_out = [
            packed_blocks(_as_spec(s), tokenizer, block_size, cache_dir, progress=progress)
            for s in validation
        ]
    elif validation_fraction:
        train = []
        for dataset in datasets:
            n = int(len(dataset) * validation_fraction)
            if n == 0 or n == len(dataset):
                train.append(dataset)  # too small to split: no validation from this source
                continue
            train.append(BlockRange(dataset, 0, len(dataset) - n))
            held_out.append(BlockRange(dataset, len(dataset) - n, len(dataset)))
    sampler = MixtureSampler(
        train,
        [s.weight for s in specs],
        batch_size,
        seed=seed,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
    )
    fraction = validation_fraction if held_out and not validation else 0.0
    return PretrainingData(specs, stores, train, sampler, held_out, fraction)


def _source_counts(store: TokenStore) -> str:
    """'path (3 files): 2,891 documents, 301,234 tokens, 104.2 tokens per document' for a one-source store."""
    (source,) = store.sources
    files = f" ({source['files']} files)" if source["files"] > 1 else ""
    docs, tokens = source["num_documents"], source["num_tokens"]
    mean = tokens / docs if docs else 0.0
    return f"{source['path']}{files}: {docs:,} documents, {tokens:,} tokens, {mean:,.1f} tokens per document"


def iter_source_texts(sources: Sequence[SourceSpec]) -> Iterator[str]:
    """Document texts of the sources (for training a tokenizer)."""
    from plmkit.data.sources import iter_documents

    for source in sources:
        for document in iter_documents(source):
            yield document.text


def packed_blocks(
    spec: SourceSpec,
    tokenizer: Any,
    block_size: int,
    cache_dir: str | Path | None = None,
    *,
    progress: bool | None = None,
) -> PackedDataset:
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
