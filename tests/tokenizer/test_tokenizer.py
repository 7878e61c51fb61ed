"""Tokenizer: byte-level BPE training, exact round trips, special ids, padding, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit.errors import ConfigError, DataError, PlmkitError, ShapeError
from plmkit.tokenizer import SpecialTokens, Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token; masked models fill in blanks.",
    "今天天气真好，我们去公园散步吧。",
    "今天天气不好，我们在家读书。",
    "Emoji are bytes too: 😀 🚀 👍🏽",
    "  leading spaces, tabs\tand\nnewlines\n",
] * 20

ROUND_TRIP = [
    "The quick brown fox",
    "今天天气真好",
    "从未见过的汉字：龘靐齉",  # characters never seen in training still round-trip (byte fallback)
    "😀 family: 👨‍👩‍👧‍👦 flags 🇫🇷",
    "  two leading spaces and trailing  ",
    "tabs\tand\r\nCRLF\n\n",
    "",
    "Ünïcödé çåfé naïve",
    "\x00control\x07chars",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_training_learns_merges(tok):
    # Frequent words become fewer tokens than their bytes.
    assert len(tok.encode("今天天气")) < len("今天天气".encode())
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")
    assert 256 < tok.vocab_size <= 400


def test_default_special_tokens(tok):
    assert tok.special_tokens == SpecialTokens(eos="<|endoftext|>", pad="<|pad|>")
    assert tok.eos_id == tok.token_to_id("<|endoftext|>") == 0  # specials get the first ids
    assert tok.pad_id == tok.token_to_id("<|pad|>") == 1
    assert tok.bos_id is None and tok.unk_id is None and tok.mask_id is None
    assert tok.cls_id is None and tok.sep_id is None
    assert tok.id_to_token(tok.eos_id) == "<|endoftext|>"
    assert tok.all_special_ids == [0, 1]


def test_add_special_tokens_never_appends_eos_like_gpt2(tok):
    ids = tok.encode("hello")  # GPT-2's tokenizer adds nothing: eos separates documents, it is no suffix
    assert tok.encode("hello", add_special_tokens=True) == ids
    assert tok.decode(ids + [tok.eos_id]) == "hello"
    assert tok.decode(ids + [tok.eos_id], skip_special_tokens=False) == "hello<|endoftext|>"


def test_custom_special_tokens():
    specials = SpecialTokens(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        mask="<mask>",
        cls="<cls>",
        sep="<sep>",
        additional=["<extra_0>"],
    )
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=400, special_tokens=specials)
    ids = [tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id, tok.cls_id, tok.sep_id]
    assert ids == list(range(7))
    assert tok.token_to_id("<extra_0>") == 7
    body = tok.encode("今天")
    assert tok.encode("今天", add_special_tokens=True) == [tok.bos_id, *body]  # a BPE never appends eos
    # A special token written in the text is recognised as one token.
    assert tok.encode("a<mask>b") == tok.encode("a") + [tok.mask_id] + tok.encode("b")


def test_encode_batch_matches_encode(tok):
    texts = ["今天天气真好", "the lazy dog", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_special_tokens=True) == [tok.encode(t, True) for t in texts]


def test_decode_accepts_tensor(tok):
    ids = tok.encode("今天天气真好")
    assert tok.decode(torch.tensor(ids)) == "今天天气真好"


def test_pad_batch_right_and_left(tok):
    batch = [[5, 6, 7], [8]]
    ids, mask = tok.pad_batch(batch)
    p = tok.pad_id
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, p, p]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = tok.pad_batch(batch, padding_side="left")
    assert ids.tolist() == [[5, 6, 7], [p, p, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = tok.pad_batch(batch, max_length=5)
    assert ids.shape == mask.shape == (2, 5)
    assert mask.sum(1).tolist() == [3, 1]


def test_pad_batch_errors_and_eos_fallback(tok):
    with pytest.raises(ShapeError, match="max_length"):
        tok.pad_batch([[1, 2, 3]], max_length=2)
    with pytest.raises(ConfigError, match="padding_side"):
        tok.pad_batch([[1]], padding_side="middle")
    eos_only = Tokenizer(tok.backend, SpecialTokens(eos="<|endoftext|>"))
    assert eos_only.pad_batch([[5], []])[0].tolist() == [[5], [eos_only.eos_id]]
    no_pad = Tokenizer(tok.backend, SpecialTokens())
    with pytest.raises(ConfigError, match="neither a pad nor an eos"):
        no_pad.pad_batch([[5]])


def test_unknown_special_token_is_an_error(tok):
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        Tokenizer(tok.backend, SpecialTokens(eos="<|endoftext|>", mask="[MASK]"))


def test_vocab_size_too_small():
    with pytest.raises(ConfigError, match="too small"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


def test_save_load_gives_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["plmkit_tokenizer"] == 1
    assert config["special_tokens"]["eos"] == "<|endoftext|>"
    loaded = Tokenizer.load(tmp_path)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.vocab_size == tok.vocab_size
    for text in ROUND_TRIP:
        assert loaded.encode(text, add_special_tokens=True) == tok.encode(text, add_special_tokens=True)
        assert loaded.decode(loaded.encode(text)) == text


@pytest.mark.parametrize("missing", ["tokenizer.json", "tokenizer_config.json"])
def test_load_missing_file_names_it(tok, tmp_path, missing):
    tok.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DataError, match=missing):
        Tokenizer.load(tmp_path)


def test_load_corrupt_files_name_them(tok, tmp_path):
    tok.save(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"truncated": ')
    with pytest.raises(DataError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(DataError, match="tokenizer_config.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"plmkit_tokenizer": 1, "special_tokens": {"eso": "x"}}')
    with pytest.raises(PlmkitError, match='did you mean "eos"'):
        Tokenizer.load(tmp_path)
