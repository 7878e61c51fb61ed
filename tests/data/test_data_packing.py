"""Packing documents into fixed blocks with EOS between them, and one-document-per-item datasets."""

from __future__ import annotations

import pytest
import torch

from plmkit.data import DocumentDataset, PackedDataset, SourceSpec, TokenStore
from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import Tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "今天天气真好",
    "a",
    "Language models predict tokens.",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([d for d in DOCS if d] * 10, vocab_size=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("data") / "docs.jsonl"  # jsonl: an empty text is a real (empty) document
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return path


def build(corpus, tok, cache, add_eos=True) -> TokenStore:
    return TokenStore.build([SourceSpec(str(corpus))], tok, cache, add_eos=add_eos, progress=False)


def stream(tok) -> list[int]:
    return [t for d in DOCS for t in tok.encode(d) + [tok.eos_id]]


@pytest.mark.parametrize("block_size", [1, 3, 7, 16])
def test_blocks_are_the_document_stream_with_eos_between_documents(tmp_path, corpus, tok, block_size):
    expected = stream(tok)
    with_eos = PackedDataset(build(corpus, tok, tmp_path), block_size)
    inserted = PackedDataset(build(corpus, tok, tmp_path, add_eos=False), block_size, eos_id=tok.eos_id)
    assert len(with_eos) == len(inserted) == len(expected) // block_size  # the partial last block is dropped
    for blocks in (with_eos, inserted):
        got = [t for i in range(len(blocks)) for t in blocks[i].tolist()]
        assert got == expected[: len(blocks) * block_size]
        assert blocks[0].dtype == torch.long and blocks[0].shape == (block_size,)
    assert torch.equal(with_eos[-1], with_eos[len(with_eos) - 1])
    with pytest.raises(IndexError):
        with_eos[len(with_eos)]


def test_eos_is_never_doubled(tmp_path, corpus, tok):
    blocks = PackedDataset(build(corpus, tok, tmp_path), 4, eos_id=tok.eos_id)  # same id as the store: fine
    flat = torch.cat([blocks[i] for i in range(len(blocks))]).tolist()
    assert flat.count(tok.eos_id) == stream(tok)[: len(flat)].count(tok.eos_id)


def test_packing_errors(tmp_path, corpus, tok):
    store = build(corpus, tok, tmp_path)
    with pytest.raises(ConfigError, match="already ends documents with eos id"):
        PackedDataset(store, 4, eos_id=tok.pad_id)
    with pytest.raises(ConfigError, match="no separator between documents"):
        PackedDataset(build(corpus, tok, tmp_path, add_eos=False), 4)
    with pytest.raises(ConfigError, match="block_size must be >= 1"):
        PackedDataset(store, 0)
    with pytest.raises(DataError, match="fewer than one block of 100000"):
        PackedDataset(store, 100_000)


def test_document_dataset(tmp_path, corpus, tok):
    store = build(corpus, tok, tmp_path)
    docs = DocumentDataset(store)
    assert len(docs) == len(DOCS)  # the empty text still has its eos
    assert docs[0].tolist() == tok.encode(DOCS[0]) + [tok.eos_id]
    cut = DocumentDataset(store, max_length=3, keep_eos=False)
    assert len(cut) == len(DOCS) - 1  # the empty document has no tokens left: left out
    assert cut.indices.tolist() == [0, 2, 3, 4]
    assert cut[0].tolist() == tok.encode(DOCS[0])[:3]
    assert cut[2].tolist() == tok.encode("a")
