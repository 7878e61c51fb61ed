"""BLEU equals sacrebleu.corpus_bleu; ROUGE equals rouge-score's RougeScorer (character tokens for CJK)."""

from __future__ import annotations

import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from plmkit.errors import ConfigError, DataError
from plmkit.evaluate.metrics import bleu, rouge

PREDICTIONS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello there, general Kenobi!",
]
REFERENCES = [
    "the cat is sitting on the mat",
    "the quick brown fox jumped over the lazy dog",
    "Hello there, General Kenobi.",
]
SECOND_REFERENCES = ["a cat sat on a mat", "a fast brown fox jumps over a lazy dog", "hi there general"]


def test_bleu_equals_sacrebleu():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert bleu(PREDICTIONS, REFERENCES) == pytest.approx(expected, abs=1e-9)
    assert 0 < expected < 100


def test_bleu_several_references_per_row():
    per_row = [[a, b] for a, b in zip(REFERENCES, SECOND_REFERENCES)]
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, SECOND_REFERENCES]).score
    assert bleu(PREDICTIONS, per_row) == pytest.approx(expected, abs=1e-9)
    assert expected > sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score  # the second set helps


def test_bleu_chinese_tokenizer():
    predictions, references = ["今天天气很好", "我喜欢读书"], ["今天天气不错", "我喜欢看书"]
    expected = sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score
    assert bleu(predictions, references, tokenize="zh") == pytest.approx(expected, abs=1e-9)
    assert bleu(["完全一样的句子"], ["完全一样的句子"], tokenize="zh") == pytest.approx(100.0)


def test_bleu_errors():
    with pytest.raises(DataError, match="2 predictions for 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(DataError, match=r"\[1, 2\] references"):
        bleu(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(ConfigError, match="tokenize='nope' is not one of sacrebleu's: none, zh, 13a"):
        bleu(["a"], ["a"], tokenize="nope")
    with pytest.raises(DataError, match="no predictions"):
        bleu([], [])


def test_missing_packages_raise_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import now fails as if not installed
    with pytest.raises(ConfigError, match=r"^BLEU needs sacrebleu: pip install 'plmkit\[metrics\]'$"):
        bleu(["a"], ["a"])
    monkeypatch.setitem(sys.modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(ConfigError, match=r"^ROUGE needs rouge-score: pip install 'plmkit\[metrics\]'$"):
        rouge(["a"], ["a"])


def reference_rouge(predictions, references, tokenizer=None) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=tokenizer)
    rows = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {key: 100 * sum(row[key].fmeasure for row in rows) / len(rows) for key in rows[0]}


def test_rouge_english_equals_rouge_score():
    ours = rouge(PREDICTIONS, REFERENCES)
    theirs = reference_rouge(PREDICTIONS, REFERENCES)
    assert ours.keys() == theirs.keys() == {"rouge1", "rouge2", "rougeL"}
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_rouge_several_references_takes_the_best():
    per_row = [[a, b] for a, b in zip(REFERENCES, SECOND_REFERENCES)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rows = [scorer.score_multi(refs, pred) for pred, refs in zip(PREDICTIONS, per_row)]
    ours = rouge(PREDICTIONS, per_row)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(100 * sum(r[key].fmeasure for r in rows) / 3, abs=1e-9)


class SpaceTokenizer:
    def tokenize(self, text):
        return text.split()


def test_rouge_chinese_by_characters():
    predictions, references = ["今天天气很好", "我喜欢读书。"], ["今天天气不错", "我喜欢看书"]
    ours = rouge(predictions, references)
    # the same texts as space-separated characters (punctuation dropped, as the default tokenizer drops it)
    spaced = [
        [" ".join(ch for ch in text if ch != "。") for text in side] for side in (predictions, references)
    ]
    theirs = reference_rouge(*spaced, tokenizer=SpaceTokenizer())
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
    # row 1 by hand: 4 of 6 characters shared (今天天气): R1 = 66.67; bigrams 3 of 5: R2 = 60; LCS 4: RL 66.67
    first = rouge(predictions[:1], references[:1])
    assert first == pytest.approx({"rouge1": 200 / 3, "rouge2": 60.0, "rougeL": 200 / 3})
    # the library's default tokenizer sees no token at all in Chinese: why rouge() splits it itself
    assert reference_rouge(predictions, references)["rouge1"] == 0.0


def test_rouge_mixed_text_keeps_latin_words():
    assert rouge(["GPT模型"], ["gpt 模型"])["rouge1"] == pytest.approx(100.0)  # tokens: gpt, 模, 型
