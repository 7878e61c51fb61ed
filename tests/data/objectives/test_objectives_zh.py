"""Whole-word masking and spelling-correction pre-training on the Chinese char tokenizer."""

from __future__ import annotations

import sys

import pytest
import torch

from plmkit.data.objectives import build_objective
from plmkit.data.objectives.spell import load_confusion_set, toneless_pinyin
from plmkit.data.objectives.wwm import is_cjk_char
from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import Tokenizer
from tiny import SHARED_DATA
from zh_tokenizer import LECTURE, zh_char_tokenizer

CONFUSION_DIR = SHARED_DATA / "csc_confusion"
# the lecture's segmentation: 今天/天气/真/好/，/我们/一起/出去玩/吧
LECTURE_WORDS = ["今天", "天气", "真", "好", "，", "我们", "一起", "出去玩", "吧"]
LECTURE_WORD_IDS = [w for w, word in enumerate(LECTURE_WORDS) for _ in word]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return zh_char_tokenizer()


def chars(tok: Tokenizer, ids) -> list[str]:
    return [tok.id_to_token(int(i)) if i >= 0 else "-" for i in ids]


def masked_words(selected: list[bool], words: list[str]) -> list[str]:
    """The words whose characters are all selected; fails if a word is only partly selected."""
    out, pos = [], 0
    for word in words:
        flags = selected[pos : pos + len(word)]
        assert all(flags) or not any(flags), f"{word} partly masked: {selected}"
        out += [word] if all(flags) else []
        pos += len(word)
    return out


# ---- whole-word masking --------------------------------------------------------------------------
def test_wwm_lecture_masks_tianqi_women_chuquwan_together(tok):
    assert "".join(LECTURE_WORDS) == LECTURE
    wwm = build_objective(
        "wwm", tok, seed=0, mlm_probability=0.4, mask_replace_prob=1.0, random_replace_prob=0.0
    )
    chosen = set()
    for _ in range(200):
        batch = wwm([{"input_ids": tok.encode(LECTURE), "word_ids": LECTURE_WORD_IDS}])
        selected = (batch["labels"][0] != -100).tolist()
        words = masked_words(selected, LECTURE_WORDS)
        chosen.update(words)
        pos = 0
        for word in LECTURE_WORDS:  # a chosen word: all its characters [MASK], labels its characters
            if word in words:
                assert chars(tok, batch["input_ids"][0][pos : pos + len(word)]) == ["[MASK]"] * len(word)
                assert "".join(chars(tok, batch["labels"][0][pos : pos + len(word)])) == word
            pos += len(word)
    assert {"天气", "我们", "出去玩"} <= chosen


def test_wwm_segments_chinese_with_jieba_and_english_by_wordpiece(tok):
    wwm = build_objective("wwm", tok)
    ids = tok.encode(LECTURE + " hello unbelievable playing", add_special_tokens=True)
    word_ids = wwm.word_ids(ids)
    tokens = chars(tok, ids)
    words: dict[int, str] = {}
    for token, w in zip(tokens, word_ids):
        if w is not None:
            words[w] = words.get(w, "") + token.removeprefix("##")
    assert list(words.values()) == [
        "今天天气",
        "真",
        "好",
        "，",
        "我们",
        "一起",
        "出去",
        "玩吧",
        "hello",
        "unbelievable",
        "playing",
    ]
    assert word_ids[0] is None and word_ids[-1] is None  # [CLS], [SEP]
    for _ in range(50):  # on-the-fly segmentation: a jieba word or ## word is masked as a whole
        selected = (wwm([ids])["labels"][0] != -100).tolist()
        for w in set(word_ids) - {None}:
            flags = [s for s, x in zip(selected, word_ids) if x == w]
            assert all(flags) or not any(flags)


def test_wwm_covers_15_percent_over_100k_tokens(tok):
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(200):  # 512 tokens: [CLS] + words of 1-4 random characters + [SEP]
        lengths = torch.randint(1, 5, (300,), generator=g).tolist()
        word_ids = [w for w, n in enumerate(lengths) for _ in range(n)][:510]
        body = torch.randint(5, 2600, (510,), generator=g).tolist()
        examples.append({"input_ids": [tok.cls_id, *body, tok.sep_id], "word_ids": [None, *word_ids, None]})
    batch = build_objective("wwm", tok, seed=0)(examples)
    selected = batch["labels"] != -100
    assert abs(selected.sum().item() / (200 * 510) - 0.15) < 0.005
    assert not selected[:, 0].any() and not selected[:, -1].any()
    inputs = batch["input_ids"][selected]
    assert abs((inputs == tok.mask_id).float().mean().item() - 0.8) < 0.015


def test_wwm_bad_word_ids_and_missing_jieba(tok, monkeypatch):
    with pytest.raises(DataError, match="word_ids has 3 entries for 15 tokens"):
        build_objective("wwm", tok)([{"input_ids": tok.encode(LECTURE), "word_ids": [0, 1, 2]}])
    monkeypatch.setitem(sys.modules, "jieba", None)  # import jieba -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'plmkit\[zh\]'"):
        build_objective("wwm", tok)
    build_objective("wwm", tok, chinese_words=False)  # no jieba needed: every character is a word


# ---- spelling correction -------------------------------------------------------------------------
def test_spell_lecture_table(tok):
    spell = build_objective(
        "spell",
        tok,
        confusion={"今": ["令"], "天": ["夭"], "们": ["门"]},
        confusion_replace_prob=1.0,
        pinyin_replace_prob=0.0,
        mask_replace_prob=0.0,
        random_replace_prob=0.0,
    )
    batch = spell([{"input_ids": tok.encode(LECTURE), "selected": [0, 2, 8]}])
    assert "".join(chars(tok, batch["input_ids"][0])) == "令天夭气真好，我门一起出去玩吧"
    assert chars(tok, batch["labels"][0]) == ["今", "-", "天", "-", "-", "-", "-", "-", "们"] + ["-"] * 6


def test_spell_same_pinyin_replacements(tok):
    spell = build_objective(
        "spell",
        tok,
        pinyin_replace_prob=1.0,
        confusion_replace_prob=0.0,
        mask_replace_prob=0.0,
        random_replace_prob=0.0,
    )
    ids = tok.encode(LECTURE)
    positions = [i for i, c in enumerate(LECTURE) if c != "，"]
    batch = spell([{"input_ids": ids, "selected": positions}])
    got = chars(tok, batch["input_ids"][0])
    for pos in positions:
        original = LECTURE[pos]
        if got[pos] != "[MASK]":  # [MASK] only when the vocabulary has no other character with that sound
            assert got[pos] != original and toneless_pinyin([got[pos]]) == toneless_pinyin([original])
    assert "".join(chars(tok, batch["labels"][0][positions])) == LECTURE.replace("，", "")
    assert got.count("[MASK]") <= 2


def test_spell_statistics_over_100k_tokens(tok):
    g = torch.Generator().manual_seed(0)
    body = torch.randint(5, 2600, (200, 510), generator=g)  # CJK-character ids of the test vocabulary
    corpus = [[tok.cls_id, *row, tok.sep_id] for row in body.tolist()]
    batch = build_objective("spell", tok, seed=0)(corpus)
    original = torch.tensor(corpus)
    selected = batch["labels"] != -100
    cjk = sum(is_cjk_char(tok.id_to_token(i)) for i in body.reshape(-1).tolist())
    assert cjk >= 100_000 and abs(selected.sum().item() / cjk - 0.15) < 0.005
    assert not selected[:, 0].any() and not selected[:, -1].any()
    inputs, originals = batch["input_ids"][selected], original[selected]
    masked = (inputs == tok.mask_id).float().mean().item()
    kept = (inputs == originals).float().mean().item()
    sample = torch.randperm(len(inputs), generator=g)[:2000]
    same_sound = (
        sum(
            toneless_pinyin([tok.id_to_token(int(inputs[i]))])
            == toneless_pinyin([tok.id_to_token(int(originals[i]))])
            and inputs[i] != originals[i]
            for i in sample.tolist()
        )
        / 2000
    )
    assert abs(kept - 0.1) < 0.015
    assert 0.1 - 0.015 < masked < 0.1 + 0.03  # [MASK] + the few characters whose sound has no partner
    assert abs(same_sound - 0.7) < 0.04  # pinyin share (confusion falls back to pinyin), 2000-sample


def test_confusion_files(tmp_path, tok):
    (tmp_path / "pinyin.txt").write_text(
        "#汉字\t同音同调\t同音异调\n们\t门扪\t闷\n今\t金\n", encoding="utf-8"
    )
    (tmp_path / "stroke.txt").write_text("天\t夭\t夫\n", encoding="utf-8")
    assert load_confusion_set(tmp_path / "pinyin.txt") == {"们": ["门", "扪", "闷"], "今": ["金"]}
    assert load_confusion_set(tmp_path / "stroke.txt") == {
        "天": ["夭", "夫"],
        "夭": ["天", "夫"],
        "夫": ["天", "夭"],
    }
    spell = build_objective("spell", tok, confusion=[str(tmp_path / "pinyin.txt"), tmp_path / "stroke.txt"])
    assert spell.confusable[tok.token_to_id("天")] == [tok.token_to_id("夭"), tok.token_to_id("夫")]
    assert tok.token_to_id("扪") is None  # not in the vocabulary: dropped
    assert spell.confusable[tok.token_to_id("们")] == [tok.token_to_id("门"), tok.token_to_id("闷")]
    (tmp_path / "bad.txt").write_text("们\t门\n好\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.txt:2"):
        load_confusion_set(tmp_path / "bad.txt")
    with pytest.raises(DataError, match="cannot read"):
        load_confusion_set(tmp_path / "missing.txt")


@pytest.mark.skipif(not CONFUSION_DIR.is_dir(), reason="shared/data/csc_confusion is not present")
def test_confusion_files_from_pycorrector():
    same_pinyin = load_confusion_set(CONFUSION_DIR / "same_pinyin.txt")  # 3,512 lines, 3,401 distinct keys
    same_stroke = load_confusion_set(CONFUSION_DIR / "same_stroke.txt")
    assert len(same_pinyin) >= 3400 and {"壹", "漪"} <= set(same_pinyin["一"])
    assert "拢" in same_stroke["龙"] and "龙" in same_stroke["拢"]


def test_spell_without_pypinyin_is_a_config_error(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypinyin", None)
    with pytest.raises(ConfigError, match=r"pip install 'plmkit\[zh\]'"):
        build_objective("spell", tok)
    build_objective("spell", tok, pinyin_replace_prob=0.0, confusion_replace_prob=0.0)  # [MASK]/random only
