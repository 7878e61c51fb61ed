"""CSC data (plmkit.data.tasks.spelling): per-character ids, example layout, corrections read back into
sentences, the confusion baseline (and its SIGHAN15 score where the shared data is present)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers

from plmkit.data.tasks.spelling import (
    ConfusionBaseline,
    apply_corrections,
    char_ids,
    csc_example,
    pad_csc_batch,
    predict_ids,
)
from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import SpecialTokens, Tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [*"我跟朋友有措挫折地的得很好，。a1", "hello", "##lo", "ab", "2015"]


def tokenizer() -> Tokenizer:
    """Chinese-BERT style: lower-casing normaliser, one token per CJK character, WordPiece otherwise."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    backend = Backend(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return Tokenizer(
        backend, SpecialTokens(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]")
    )


TOK = tokenizer()
ID = {token: TOK.token_to_id(token) for token in [*SPECIALS, *WORDS]}
UNK, CLS, SEP = ID["[UNK]"], ID["[CLS]"], ID["[SEP]"]


def test_char_ids_one_per_character():
    text = "我跟A 唷2015ab"
    ids = char_ids(TOK, text)
    assert len(ids) == len(text)
    # "A" -> the vocabulary's "a" (normalised); space and the out-of-vocabulary 唷 -> [UNK];
    # "2015" and "ab" are single tokens as words, but each character stands alone here
    expected = [ID["我"], ID["跟"], ID["a"], UNK, UNK, UNK, UNK, ID["1"], UNK, ID["a"], UNK]
    assert ids == expected
    assert TOK.encode("2015") == [ID["2015"]]  # what char_ids avoids: 4 characters, 1 token
    assert char_ids(TOK, "") == []


def test_example_layout():
    ex = csc_example(TOK, "我跟朋有", "我跟朋友", max_length=16)
    assert ex["input_ids"] == [CLS, ID["我"], ID["跟"], ID["朋"], ID["有"], SEP]
    assert ex["labels"] == [-100, ID["我"], ID["跟"], ID["朋"], ID["友"], -100]
    assert ex["detection_labels"] == [-100, 0, 0, 0, 1, -100]
    assert ex["attention_mask"] == [1] * 6
    # truncation: max_length counts [CLS] and [SEP]
    short = csc_example(TOK, "我跟朋有", "我跟朋友", max_length=4)
    assert short["input_ids"] == [CLS, ID["我"], ID["跟"], SEP]
    assert short["detection_labels"] == [-100, 0, 0, -100]
    # two different unknown characters: the same [UNK] id on both sides, still a detection label 1
    unknown = csc_example(TOK, "唷", "嗨", max_length=8)
    assert unknown["labels"][1] == unknown["input_ids"][1] == UNK and unknown["detection_labels"][1] == 1


def test_example_errors():
    with pytest.raises(DataError, match="unequal lengths"):
        csc_example(TOK, "我跟", "我", max_length=8)
    with pytest.raises(ConfigError, match="max_length"):
        csc_example(TOK, "我", "我", max_length=2)
    gpt_like = Tokenizer(
        Backend(models.WordPiece({"[PAD]": 0, "x": 1}, unk_token="x")), SpecialTokens(pad="[PAD]")
    )
    with pytest.raises(ConfigError, match="unk token"):
        char_ids(gpt_like, "x")


def test_pad_batch():
    examples = [csc_example(TOK, "我跟朋有", "我跟朋友", 16), csc_example(TOK, "我", "我", 16)]
    batch = pad_csc_batch(examples, TOK.pad_id)
    assert all(t.shape == (2, 6) and t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"][1].tolist() == [CLS, ID["我"], SEP, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][1].tolist() == [-100, ID["我"], -100, -100, -100, -100]
    assert batch["detection_labels"][1].tolist() == [-100, 0, -100, -100, -100, -100]


def test_predict_ids_keeps_padding():
    logits = torch.zeros(1, 4, TOK.vocab_size)
    logits[0, :, ID["好"]] = 1.0
    ids = torch.tensor([[CLS, ID["我"], SEP, 0]])
    assert predict_ids(logits, ids, torch.tensor([[1, 1, 1, 0]])).tolist() == [[ID["好"]] * 3 + [0]]
    assert predict_ids(logits, ids).tolist() == [[ID["好"]] * 4]


def test_apply_corrections():
    source = "我跟朋有A 唷"
    row = [CLS, ID["我"], ID["跟"], ID["朋"], ID["友"], ID["a"], ID["有"], ID["好"], SEP]
    # 有 -> 友; "A" predicted as its own token "a" stays "A"; the space and 唷 become 有 and 好
    assert apply_corrections(source, row, TOK) == "我跟朋友A有好"
    assert apply_corrections(source, torch.tensor(row), TOK) == "我跟朋友A有好"
    # specials, [UNK], "##" pieces and multi-character tokens never replace a character
    junk = [CLS, SEP, UNK, ID["[MASK]"], ID["##lo"], ID["hello"], ID["2015"], ID["[PAD]"], SEP]
    assert apply_corrections(source, junk, TOK) == source
    # a short row (truncated characters): the rest is copied
    assert apply_corrections(source, row[:3], TOK) == "我跟朋有A 唷"
    for ids in (row, junk, row[:3], [], list(range(TOK.vocab_size))):
        corrected = apply_corrections(source, ids, TOK)
        assert len(corrected) == len(source)
        assert not any(special in corrected for special in SPECIALS)


def test_baseline_on_a_tiny_corpus():
    pairs = [
        ("我的朋有很好", "我的朋友很好"),
        ("不怕措折", "不怕挫折"),
        ("措折很好", "挫折很好"),
        ("他有朋友，有空", "他有朋友，有空"),  # 有 is right twice here, wrong once above
        ("走的很快", "走得很快"),  # 的 wrong once, right once above
    ]
    baseline = ConfusionBaseline.fit(pairs)
    assert baseline.corrections["措"] == {"挫": 2}
    assert baseline.right["有"] == 2 and baseline.right["的"] == 1
    assert baseline.replacement("措") == "挫"  # wrong 2, right 0
    assert baseline.replacement("有") is None  # wrong 1, right 2
    assert baseline.replacement("的") is None  # wrong 1, right 1: not MORE often wrong
    assert baseline.replacement("好") is None  # never wrong
    assert baseline.correct("措折的朋有") == "挫折的朋有"
    assert ConfusionBaseline.fit(pairs, threshold=0.3).correct("措折的朋有") == "挫折得朋友"
    # ties between corrections: the lowest code point
    assert ConfusionBaseline.fit([("甲", "乙"), ("甲", "丙")]).replacement("甲") == min("乙", "丙")
    with pytest.raises(DataError, match="pair 1"):
        ConfusionBaseline.fit([("我", "我们")])
    with pytest.raises(ConfigError, match="threshold"):
        ConfusionBaseline(threshold=1.0)


def _pairs(path):
    with open(path, encoding="utf-8") as f:
        return [(r["source"], r["target"]) for r in map(json.loads, f)]


def test_baseline_on_sighan15(shared_data):
    """Fit on the SIGHAN13-15 training sentences, correct SIGHAN15's test set: sentence-level exact
    correction (a changed sentence counts only when it equals the target)."""
    folder = shared_data / "sighan_csc"
    baseline = ConfusionBaseline.fit(_pairs(folder / "train_sighan13-15_merged.jsonl"))
    test = _pairs(folder / "sighan15_test.jsonl")
    predictions = [baseline.correct(source) for source, _ in test]
    changed = sum(p != s for p, (s, _) in zip(predictions, test, strict=True))
    right = sum(p != s and p == t for p, (s, t) in zip(predictions, test, strict=True))
    with_errors = sum(s != t for s, t in test)
    precision, recall = right / changed, right / with_errors
    print(
        f"SIGHAN15 confusion baseline: changed {changed}, right {right}, with errors {with_errors}, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    # 550 sentences have wrong_ids, but in 8 of them the simplified source and target are equal
    assert with_errors == 542 and len(test) == 1100
    assert all(len(p) == len(s) for p, (s, _) in zip(predictions, test, strict=True))
    assert 0 < precision < 1 and 0 < recall < 1


def test_char_ids_see_added_tokens():
    tok = tokenizer()
    assert char_ids(tok, "嗨我") == [UNK, ID["我"]]
    tok.backend.add_tokens(["嗨"])
    assert char_ids(tok, "嗨我") == [tok.token_to_id("嗨"), ID["我"]] and tok.token_to_id("嗨") != UNK
