"""Datasets over a TokenStore: packed fixed-length blocks, or one document per item.

Packing (GPT-style): documents are concatenated into one stream with an EOS between them and the
stream is cut into blocks of `block_size` tokens, so no compute is spent on padding and a block may
start or end mid-document. The last, partial block is dropped.

    blocks = PackedDataset(store, block_size=1024)   # blocks[i]: LongTensor (1024,)
    docs = DocumentDataset(store, max_length=512)     # docs[i]: LongTensor (<= 512,), one document
"""

from __future__ import annotations

import numpy as np
import torch

from plmkit.data.store import TokenStore
from plmkit.errors import ConfigError, DataError


class PackedDataset:
    """Contiguous blocks of `block_size` tokens over the document stream, EOS between documents.

    A store built with add_eos=True already ends every document with its EOS: blocks are plain
    slices of the token array and `eos_id` must be None or that same id. For a store built without
    EOS, `eos_id` (e.g. a [SEP] id) is inserted after every document as blocks are read.
    """

    def __init__(self, store: TokenStore, block_size: int, eos_id: int | None = None):
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        if store.add_eos:
            if eos_id is not None and eos_id != store.eos_id:
                raise ConfigError(
                    f"the store already ends documents with eos id {store.eos_id}, not {eos_id}; "
                    "pass eos_id=None or rebuild the store with add_eos=False"
                )
            separator = None  # already in the tokens: never double it
        elif eos_id is None:
            raise ConfigError(
                "the store has no separator between documents (built with add_eos=False); "
                "pass eos_id= to insert one, or rebuild it with add_eos=True"
            )
        else:
            separator = eos_id
        self.store, self.block_size, self.separator = store, block_size, separator
        stream = store.num_tokens + (store.num_documents if separator is not None else 0)
        self.num_blocks = stream // block_size
        if self.num_blocks == 0:
            raise DataError(
                f"{', '.join(s['path'] for s in store.sources) or store.directory.name}: {stream} tokens "
                f"are fewer than one block of {block_size}; "
                "add data or lower block_size"
            )
        if separator is not None:
            # stream position where document d starts: every earlier document added one separator
            self._starts = store.offsets[:-1] + np.arange(store.num_documents, dtype=np.int64)
            self._lengths = store.document_lengths()

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -self.num_blocks <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range: {self.num_blocks} blocks")
        start = (i % self.num_blocks) * self.block_size
        if self.separator is None:
            ids = self.store.tokens[start : start + self.block_size]
        else:
            ids = self._with_separators(start, start + self.block_size)
        return torch.from_numpy(ids.astype(np.int64))

    def _with_separators(self, begin: int, end: int) -> np.ndarray:
        """Stream positions [begin, end): document tokens with a separator after each document."""
        tokens, offsets = self.store.tokens, self.store.offsets
        d = int(np.searchsorted(self._starts, begin, side="right")) - 1
        pieces, position = [], begin
        while position < end:
            within, length = position - int(self._starts[d]), int(self._lengths[d])
            if within < length:
                take = min(length - within, end - position)
                pieces.append(tokens[offsets[d] + within : offsets[d] + within + take])
                position += take
            else:  # at the separator after document d
                pieces.append(np.array([self.separator], dtype=tokens.dtype))
                position, d = position + 1, d + 1
        return np.concatenate(pieces)


class DocumentDataset:
    """One document per item (for objectives that need document boundaries), cut to `max_length`.

    `keep_eos=False` drops the EOS the store appended. Documents with no tokens are left out, since
    collators cannot use them; `indices` maps items to store documents.
    """

    def __init__(self, store: TokenStore, max_length: int | None = None, keep_eos: bool = True):
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        self.store, self.max_length = store, max_length
        self.drop = int(store.add_eos and not keep_eos)
        self.indices = np.flatnonzero(store.document_lengths() - self.drop > 0)
        if len(self.indices) == 0:
            raise DataError(f"{store.directory.name}: every document is empty")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        ids = self.store.document(int(self.indices[i]))
        ids = ids[: len(ids) - self.drop]
        if self.max_length is not None:
            ids = ids[: self.max_length]
        return torch.from_numpy(ids.astype(np.int64))
