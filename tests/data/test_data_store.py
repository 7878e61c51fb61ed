"""TokenStore: tokens + offsets on disk, cache reuse without re-tokenizing, corrupt caches rebuilt."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

from plmkit.data import SourceSpec, TokenStore, default_cache_dir
from plmkit.data.store import HEADER_FILE, OFFSETS_FILE, TOKENS_FILE, token_dtype
from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import SpecialTokens, Tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气真好，我们一起出去玩吧",
    "a",
    "Language models.",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe(DOCS * 10, vocab_size=300)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return path


def count_encodes(tok: Tokenizer, monkeypatch) -> list[int]:
    """Wrap tok.encode_batch so the test sees how many documents were tokenized."""
    calls: list[int] = []
    original = Tokenizer.encode_batch

    def counting(texts, add_special_tokens=False):
        calls.append(len(texts))
        return original(tok, texts, add_special_tokens)

    monkeypatch.setattr(tok, "encode_batch", counting)
    return calls


def test_tokens_offsets_and_per_source_counts(tmp_path, corpus, tok):
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "fox"}\n{"text": ""}\n', encoding="utf-8")
    store = TokenStore.build(
        [SourceSpec(str(corpus)), SourceSpec(str(other))], tok, tmp_path / "cache", progress=False
    )
    expected = [tok.encode(t) + [tok.eos_id] for t in DOCS + ["fox", ""]]
    assert store.num_documents == len(expected) == len(store)
    assert store.num_tokens == sum(map(len, expected))
    assert [store.document(i).tolist() for i in range(len(expected))] == expected
    assert store.document(-1).tolist() == [tok.eos_id]  # an empty text is a lone eos
    assert store.tokens.dtype == np.uint16 and isinstance(store.tokens, np.memmap)
    assert store.offsets.dtype == np.int64 and store.offsets[-1] == store.num_tokens
    assert [(s["num_documents"], s["num_tokens"]) for s in store.sources] == [
        (4, sum(map(len, expected[:4]))),
        (2, sum(map(len, expected[4:]))),
    ]
    assert store.add_eos and store.eos_id == tok.eos_id
    with pytest.raises(IndexError):
        store.document(6)


def test_without_eos(tmp_path, corpus, tok):
    store = TokenStore.build(SourceSpec(str(corpus)), tok, tmp_path, add_eos=False, progress=False)
    assert store.document(1).tolist() == tok.encode(DOCS[1]) and store.eos_id is None and not store.add_eos


def test_second_build_reuses_the_cache_without_tokenizing(tmp_path, corpus, tok, monkeypatch):
    calls = count_encodes(tok, monkeypatch)
    cache = tmp_path / "cache"
    first = TokenStore.build([SourceSpec(str(corpus))], tok, cache, progress=False)
    assert sum(calls) == len(DOCS)
    second = TokenStore.build(
        [SourceSpec(str(corpus), weight=5)], tok, cache, progress=False
    )  # weight: no effect
    assert sum(calls) == len(DOCS), "the second build tokenized again"
    assert second.directory == first.directory
    assert np.array_equal(second.tokens, first.tokens)
    assert [p.name for p in cache.iterdir()] == [first.directory.name]  # no temporary folders left


def test_cache_key_covers_files_tokenizer_and_settings(tmp_path, corpus, tok):
    build = lambda spec, t=tok, **kw: TokenStore.build([spec], t, tmp_path, progress=False, **kw).directory
    base = build(SourceSpec(str(corpus)))
    assert build(SourceSpec(str(corpus)), add_eos=False) != base
    assert build(SourceSpec(str(corpus), blank_line_documents=True)) != base
    other_tok = Tokenizer.train_bpe(DOCS * 10, vocab_size=290)
    assert build(SourceSpec(str(corpus)), other_tok) != base
    corpus.write_text("changed\n", encoding="utf-8")
    stamp = time.time() + 10
    os.utime(corpus, (stamp, stamp))
    changed = build(SourceSpec(str(corpus)))
    assert changed != base
    assert TokenStore.open(changed).num_documents == 1


@pytest.mark.parametrize(
    "damage", ["truncate tokens", "flip a token byte", "garble header", "drop header", "truncate offsets"]
)
def test_a_corrupt_cache_is_detected_and_rebuilt(tmp_path, corpus, tok, monkeypatch, capsys, damage):
    calls = count_encodes(tok, monkeypatch)
    store = TokenStore.build([SourceSpec(str(corpus))], tok, tmp_path, progress=False)
    expected = np.array(store.tokens)
    folder = store.directory
    del store
    if damage == "truncate tokens":
        with open(folder / TOKENS_FILE, "r+b") as f:
            f.truncate(5)
    elif damage == "flip a token byte":
        data = bytearray((folder / TOKENS_FILE).read_bytes())
        data[3] ^= 0xFF
        (folder / TOKENS_FILE).write_bytes(bytes(data))
    elif damage == "garble header":
        (folder / HEADER_FILE).write_bytes(b'{"format": 1, "dtype": "uint16", "num_tok\x00')
    elif damage == "drop header":
        (folder / HEADER_FILE).unlink()
    else:
        with open(folder / OFFSETS_FILE, "r+b") as f:
            f.truncate(8)
    with pytest.raises(DataError):
        TokenStore.open(folder)
    rebuilt = TokenStore.build([SourceSpec(str(corpus))], tok, tmp_path, progress=False)
    assert sum(calls) == 2 * len(DOCS)  # tokenized again
    assert "unusable" in capsys.readouterr().err
    assert rebuilt.directory == folder and np.array_equal(rebuilt.tokens, expected)


def test_a_failed_build_leaves_nothing_behind(tmp_path, tok):
    bad = tmp_path / "data" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON"):
        TokenStore.build([SourceSpec(str(bad))], tok, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_skipped_input_is_reported_and_remembered(tmp_path, tok, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n{"text": "fine"}\n', encoding="utf-8")
    spec = SourceSpec(str(bad), on_error="skip")
    store = TokenStore.build([spec], tok, tmp_path / "cache", progress=False)
    assert store.num_documents == 2 and store.skipped.counts == {"malformed JSON": 1}
    assert f"skipped 1 × malformed JSON (first at {bad}:2)" in capsys.readouterr().err
    TokenStore.build([spec], tok, tmp_path / "cache", progress=False)  # from the cache: still reported
    assert "(cached store)" in capsys.readouterr().err


def test_no_documents_at_all_is_an_error(tmp_path, tok):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents in .*malformed JSON"):
        TokenStore.build([SourceSpec(str(bad), on_error="skip")], tok, tmp_path / "cache", progress=False)


def test_dtype_is_uint16_when_the_vocab_fits_else_uint32(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    vocab = {f"w{i}": i for i in range(70_000)}
    backend = BackendTokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big = Tokenizer(backend, SpecialTokens(eos="w69999", unk="w0"))
    corpus = tmp_path / "ids.txt"
    corpus.write_text("w65536 w1 w69998\nw3\n", encoding="utf-8")
    store = TokenStore.build([SourceSpec(str(corpus))], big, tmp_path / "cache", progress=False)
    assert store.tokens.dtype == np.uint32
    assert store.document(0).tolist() == [65536, 1, 69998, 69999]


def test_progress_bar_on_stderr(tmp_path, corpus, tok, capsys):
    TokenStore.build([SourceSpec(str(corpus))], tok, tmp_path, progress=True)
    assert "tokenizing: 100.0%" in capsys.readouterr().err


def test_cache_dir_default_and_unwritable(tmp_path, corpus, tok, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "env_cache"))
    assert default_cache_dir() == tmp_path / "env_cache"
    store = TokenStore.build([SourceSpec(str(corpus))], tok, progress=False)
    assert store.directory.parent == tmp_path / "env_cache"
    monkeypatch.delenv("PLMKIT_CACHE")
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / ".cache" / "plmkit"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot write the token cache .* set cache_dir or \\$PLMKIT_CACHE"):
        TokenStore.build([SourceSpec(str(corpus))], tok, blocker / "cache", progress=False)


def test_add_eos_needs_an_eos_token(tmp_path, corpus):
    no_eos = Tokenizer.train_bpe(DOCS * 10, vocab_size=300, special_tokens=SpecialTokens(pad="<pad>"))
    with pytest.raises(ConfigError, match="add_eos=True needs a tokenizer with an eos"):
        TokenStore.build([SourceSpec(str(corpus))], no_eos, tmp_path, progress=False)


def test_header_is_readable_json(tmp_path, corpus, tok):
    store = TokenStore.build([SourceSpec(str(corpus))], tok, tmp_path, progress=False)
    header = json.loads((store.directory / HEADER_FILE).read_text())
    assert header["num_documents"] == 4 and header["dtype"] == "uint16" and len(header["tokens_sha256"]) == 64
