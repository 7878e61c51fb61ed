"""SpanBERT span masking: mask contiguous spans of whole words instead of scattered tokens.

Following SpanBERT (Joshi et al. 2020) and its released code, a span length ell (in words) is drawn
from Geo(p=0.2) truncated to [1, max_span_length=10] and renormalised (mean 3.80 words), and the span
covers ell complete words from a word start (WordPiece `##` words; each CJK character is a word). The
start is uniform among the words where the whole span fits before a special token, padding or an
already masked word (any free word, span cut short, when it fits nowhere), so spans never overlap.
Spans are drawn until mlm_probability of the maskable tokens are covered (the budget is rounded
stochastically, so the rate is exact in expectation); the last span of a sequence is cut at the budget.
The 80/10/10 replacement is decided per span, as SpanBERT does: a whole span becomes [MASK]s, random
tokens, or stays. With whole_words=False spans count tokens and may start at any token.

Not implemented: SpanBERT's span-boundary objective (SBO), which needs an extra model head; the labels
here are the plain masked-token ones (SpanBERT's MLM loss).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch

from plmkit.config.fields import Range
from plmkit.data.objectives.base import Example, Objective, Probability, Rate
from plmkit.data.objectives.mlm import (
    check_replace_probs,
    mask_tokens,
    selectable,
    stochastic_round,
)
from plmkit.data.objectives.wwm import token_word_ids, words_of
from plmkit.errors import ConfigError


def span_length_probs(p: float, max_length: int) -> list[float]:
    """P(length = 1..max_length) of Geo(p) truncated at max_length and renormalised (SpanBERT)."""
    weights = [p * (1 - p) ** (k - 1) for k in range(1, max_length + 1)]
    return [w / sum(weights) for w in weights]


def mean_span_length(p: float, max_length: int) -> float:
    return sum(k * q for k, q in enumerate(span_length_probs(p, max_length), start=1))


def free_run_lengths(words: Sequence[Sequence[int]], masked: Sequence[bool]) -> list[int]:
    """For each word, how many unmasked words follow contiguously from it (itself included)."""
    room = [0] * (len(words) + 1)
    for k in reversed(range(len(words))):
        if not masked[k]:
            adjacent = k + 1 < len(words) and words[k + 1][0] == words[k][-1] + 1  # no special/pad between
            room[k] = 1 + (room[k + 1] if adjacent else 0)
    return room[:-1]


@dataclass(eq=False)
class SpanMaskObjective(Objective):
    """Masked LM over geometric-length spans of whole words (SpanBERT, without the SBO head)."""

    name: ClassVar[str] = "span"
    family: ClassVar[str] = "masked"

    mlm_probability: Rate = 0.15  # share of maskable tokens covered by spans
    geometric_p: Rate = 0.2  # span length ~ Geo(p), in words
    max_span_length: Annotated[int, Range(ge=1)] = 10  # truncation of the geometric distribution
    mask_replace_prob: Probability = 0.8  # per span: all [MASK]
    random_replace_prob: Probability = 0.1  # per span: random tokens
    whole_words: bool = True  # spans start at word starts and count words; False: tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        check_replace_probs(
            self.name, mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob
        )
        if (
            isinstance(self.max_span_length, bool)
            or not isinstance(self.max_span_length, int)
            or self.max_span_length < 1
        ):
            raise ConfigError(
                f"objective 'span': max_span_length={self.max_span_length!r} must be an integer >= 1"
            )
        self.required_id("mask")
        probs = span_length_probs(self.geometric_p, self.max_span_length)
        self._cdf = [sum(probs[: k + 1]) for k in range(len(probs))]

    def select_spans(self, words: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
        """Token positions of each span drawn over `words` (token positions per word, in order)."""
        uniforms = torch.rand(2 * budget, generator=self.generator).tolist()  # <= budget spans, 2 draws each
        masked = [False] * len(words)
        spans: list[list[int]] = []
        covered = 0
        while covered < budget and not all(masked):
            length = min(bisect.bisect_right(self._cdf, uniforms.pop() * self._cdf[-1]) + 1, len(self._cdf))
            room = free_run_lengths(words, masked)
            starts = [k for k, r in enumerate(room) if r >= length] or [
                k for k, r in enumerate(room) if r > 0
            ]
            k = starts[int(uniforms.pop() * len(starts))]
            span: list[int] = []
            for _ in range(min(length, room[k])):
                if covered >= budget:
                    break
                masked[k] = True
                span.extend(words[k])
                covered += len(words[k])
                k += 1
            spans.append(span)
        return spans

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        ids = [self.ids_of(e) for e in examples]
        input_ids = self.pad_right(ids, self.pad_id)  # (B, T)
        attention_mask = self.attention_mask(ids)
        special = self.special_ids()
        allowed = selectable(input_ids, attention_mask, special)
        special_set = set(special.tolist())
        budgets = stochastic_round(allowed.sum(1) * self.mlm_probability, self.uniform(len(ids)))
        groups = torch.full_like(input_ids, -1)  # span index per masked position
        for row, seq in enumerate(ids):
            if self.whole_words:
                tokens = [self.tokenizer.id_to_token(int(i)) for i in seq]
                word_ids = token_word_ids(tokens, [int(i) in special_set for i in seq], None)
            else:
                word_ids = list(range(len(seq)))
            words = words_of(word_ids, allowed[row])
            if words:
                for n, span in enumerate(self.select_spans(words, max(1, int(budgets[row])))):
                    groups[row, span] = n
        inputs, labels = mask_tokens(
            input_ids,
            groups >= 0,
            self.tokenizer,
            self.generator,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            groups=groups,
        )
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}
