"""Whole-word masking (Chinese-BERT-wwm): all tokens of a chosen word are selected together.

    今天 天气 真 好 ， 我们 一起 出去玩 吧   ->   今天 [M][M] 真 好 ， 我们 一起 [M][M][M] 吧

Words: a dict example may carry "word_ids" (one entry per token, as `BatchEncoding.word_ids()`: equal
consecutive ids form one word, None or -1 = no word). Otherwise words are found on the fly: runs of
single-CJK-character tokens are segmented by jieba (or `segmenter`), and other tokens form words by the
WordPiece rule (a `##` token continues the previous word). Special tokens never belong to a word.

Selection follows Google's create_pretraining_data.py (which Chinese-BERT-wwm used): shuffle the words,
take them while they fit in a budget of mlm_probability x (maskable tokens), skipping a word that would
overflow it. The budget is rounded stochastically, so the masked share is mlm_probability in
expectation. The 80/10/10 replacement is then decided per token, as in Google's code and
transformers' DataCollatorForWholeWordMask.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from plmkit.data.objectives.base import Example, Objective, Probability, Rate
from plmkit.data.objectives.mlm import (
    check_replace_probs,
    mask_tokens,
    selectable,
    stochastic_round,
)
from plmkit.errors import ConfigError, DataError

Segmenter = Callable[[str], list[str]]


def is_cjk_char(text: str | None) -> bool:
    """True for a single CJK ideograph (the ranges BERT's tokenizer splits one per token)."""
    if text is None or len(text) != 1:
        return False
    cp = ord(text)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def jieba_segmenter() -> Segmenter:
    """jieba's accurate-mode segmentation (imported on first use: an optional dependency)."""
    try:
        import jieba
    except ImportError as err:
        raise ConfigError(
            "Chinese whole-word masking segments words with jieba, which is not installed: "
            "pip install 'plmkit[zh]' (or give examples explicit word_ids)"
        ) from err
    jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict ..." on first use
    return jieba.lcut


def token_word_ids(
    tokens: Sequence[str | None], special: Sequence[bool], segment: Segmenter | None
) -> list[int | None]:
    """A word id per token (None for special tokens): CJK runs by `segment` (None: one word per
    character), everything else by the WordPiece `##` continuation rule."""
    word_ids: list[int | None] = [None] * len(tokens)
    word, i = -1, 0
    while i < len(tokens):
        if special[i]:
            i += 1
        elif is_cjk_char(tokens[i]):
            j = i
            while j < len(tokens) and not special[j] and is_cjk_char(tokens[j]):
                j += 1
            run = "".join(tokens[i:j])  # type: ignore[arg-type]
            pieces = segment(run) if segment is not None else list(run)
            if sum(len(p) for p in pieces) != len(run):  # a segmenter that rewrote the text: be safe
                pieces = list(run)
            for piece in pieces:
                word += 1
                for _ in piece:
                    word_ids[i] = word
                    i += 1
        else:
            continues = (tokens[i] or "").startswith("##") and i > 0 and word_ids[i - 1] is not None
            word += 0 if continues else 1
            word_ids[i] = word
            i += 1
    return word_ids


def words_of(word_ids: Sequence[int | None], allowed: torch.Tensor) -> list[list[int]]:
    """Token positions of each word: maximal runs of equal word ids over maskable positions."""
    words: list[list[int]] = []
    previous = None
    for pos, wid in enumerate(word_ids):
        if wid is None or wid < 0 or not allowed[pos]:
            previous = None
            continue
        if wid == previous:
            words[-1].append(pos)
        else:
            words.append([pos])
        previous = wid
    return words


@dataclass(eq=False)
class WholeWordMaskObjective(Objective):
    """Masked LM that selects whole words (jieba words for Chinese, `##` WordPiece words otherwise)."""

    name: ClassVar[str] = "wwm"
    family: ClassVar[str] = "masked"

    mlm_probability: Rate = 0.15  # share of maskable tokens covered by the selected words
    mask_replace_prob: Probability = 0.8  # per selected token: [MASK]
    random_replace_prob: Probability = 0.1  # per selected token: a random non-special token
    chinese_words: bool = True  # segment CJK runs into words with jieba; False: each character is a word
    segmenter: Segmenter | None = None  # text -> words, replaces jieba (e.g. an LTP wrapper)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_replace_probs(
            self.name, mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob
        )
        self.required_id("mask")
        if self.segmenter is not None and not callable(self.segmenter):
            raise ConfigError(
                f"objective 'wwm': segmenter must be a function text -> list of words, got {self.segmenter!r}"
            )
        self._segment: Segmenter | None = None
        if self.chinese_words:
            self._segment = self.segmenter or jieba_segmenter()

    def word_ids(self, ids: Sequence[int]) -> list[int | None]:
        """Word id per token, segmenting on the fly (see the module docstring)."""
        special = set(self.special_ids().tolist())
        tokens = [self.tokenizer.id_to_token(int(i)) for i in ids]
        return token_word_ids(tokens, [int(i) in special for i in ids], self._segment)

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        ids = [self.ids_of(e) for e in examples]
        input_ids = self.pad_right(ids, self.pad_id)  # (B, T)
        attention_mask = self.attention_mask(ids)
        allowed = selectable(input_ids, attention_mask, self.special_ids())
        budgets = stochastic_round(allowed.sum(1) * self.mlm_probability, self.uniform(len(ids)))
        selected = torch.zeros_like(allowed)
        for row, example in enumerate(examples):
            words = words_of(self._example_word_ids(example, ids[row], row), allowed[row])
            budget, covered = max(1, int(budgets[row])), 0
            for w in torch.randperm(len(words), generator=self.generator).tolist():
                if covered >= budget:
                    break
                if covered + len(words[w]) > budget:  # Google's rule: skip a word that overflows
                    continue
                selected[row, words[w]] = True
                covered += len(words[w])
        inputs, labels = mask_tokens(
            input_ids,
            selected,
            self.tokenizer,
            self.generator,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}

    def _example_word_ids(self, example: Example, ids: list[int], row: int) -> list[int | None]:
        given = example.get("word_ids") if isinstance(example, dict) else None
        if given is None:
            return self.word_ids(ids)
        if len(given) != len(ids):
            raise DataError(
                f"example {row}: word_ids has {len(given)} entries for {len(ids)} tokens; give one per token"
            )
        return list(given)
