"""GLM autoregressive blank infilling (Du et al. 2022, "GLM: General Language Model Pretraining").

Spans with Poisson(λ=3) lengths are sampled until they cover ~15% of the text. Part A is the text with
every span replaced by ONE [MASK]; part B holds the spans in random order, each as <sop> + span, and is
predicted left to right (each span ends by predicting <eop>). A is bidirectional, B is causal and sees
all of A (a prefix mask with prefix_lengths = len(A)). Two position ids (config.block_positions=True):
position_ids is the position in A (a B token gets the position of its span's [MASK]), and
block_position_ids is 0 in A and 1, 2, ... inside each span of B.

    text "今天天气真好" (今 at 0), spans 天气 = [2, 4) and 好 = [5, 6), B order [好, 天气]:
    input_ids           [CLS] 今 天 [MASK] 真 [MASK] | <sop> 好    <sop> 天 气
    labels              -100 ...               -100  | 好    <eop> 天    气 <eop>
    position_ids          0   1  2   3     4   5     | 5     5     3     3  3
    block_position_ids    0   0  0   0     0   0     | 1     2     1     2  3
    prefix_lengths 6 (part A); labels are aligned: labels[t] is predicted at position t.

A leading [CLS] (when the tokenizer has one, `add_cls`) starts part A; a leading cls/bos and a trailing
sep/eos of an example are stripped first. Special tokens are never inside a span (spans are laid out
over the other tokens; a special token splits a span that would cover it into two blanks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from plmkit.config.fields import Range
from plmkit.data.objectives.base import Example, Objective, Positive
from plmkit.errors import ConfigError

Span = tuple[int, int]  # [start, end) in the text


@dataclass(eq=False)
class GLMObjective(Objective):
    name = "glm"
    family = "prefix"

    mask_ratio: Annotated[float, Range(gt=0, lt=1)] = 0.15  # share of text tokens inside spans
    poisson_lambda: Positive = 3.0  # mean span length (zero-length draws are redrawn)
    mask_token: str | None = None  # None: the tokenizer's mask role ([MASK]); GLM also uses [sMASK]/[gMASK]
    sop_token: str = "<sop>"
    eop_token: str = "<eop>"
    add_cls: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mask_id = self.required_id("mask") if self.mask_token is None else self._token(self.mask_token)
        self.sop_id = self._token(self.sop_token)
        self.eop_id = self._token(self.eop_token)
        self.cls_id = self.tokenizer.cls_id if self.add_cls else None
        self._special = set(self.special_ids().tolist())
        ends = (self.tokenizer.cls_id, self.tokenizer.bos_id), (self.tokenizer.sep_id, self.tokenizer.eos_id)
        self._leading = {i for i in ends[0] if i is not None}
        self._trailing = {i for i in ends[1] if i is not None}

    def _token(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ConfigError(
                f"glm needs the token {token!r} but the tokenizer does not have it; add it as a special token "
                "(GLM tokenizers carry [MASK] [sMASK] [gMASK] <sop> <eop>)"
            )
        return token_id

    def text(self, ids: list[int]) -> list[int]:
        return self.strip_ends(ids, self._leading, self._trailing)

    # ---- sampling ---------------------------------------------------------------------------------
    def sample_spans(self, ids: list[int]) -> list[Span]:
        """Non-overlapping, non-touching spans of non-special tokens covering round(ratio * n) of them."""
        corruptible = [i for i, t in enumerate(ids) if t not in self._special]
        n = len(corruptible)
        budget = max(1, int(round(n * self.mask_ratio))) if n >= 2 else 0
        lengths: list[int] = []
        total = 0
        while total < budget:
            draw = int(torch.poisson(torch.tensor([self.poisson_lambda]), generator=self.generator))
            if draw > 0:
                lengths.append(min(draw, budget - total))
                total += lengths[-1]
        # distinct gaps among the kept tokens (gap g = before kept token g) keep spans apart
        gaps = n - budget + 1
        lengths = lengths[:gaps]
        where = torch.randperm(gaps, generator=self.generator)[: len(lengths)].sort().values.tolist()
        spans: list[Span] = []
        offset = 0
        for gap, length in zip(where, lengths):
            first = gap + offset  # corruptible index of the span's first token
            # back to text positions; a special token between two corruptible tokens splits the span
            run = [corruptible[c] for c in range(first, first + length)]
            start = run[0]
            for prev, cur in zip(run, run[1:]):
                if cur != prev + 1:
                    spans.append((start, prev + 1))
                    start = cur
            spans.append((start, run[-1] + 1))
            offset += length
        return spans

    # ---- the example layout -------------------------------------------------------------------------
    def infill_example(self, ids: list[int], spans: list[Span], order: list[int]) -> dict[str, list[int]]:
        """Parts A and B for fixed spans ([start, end) in `ids`, sorted, not overlapping) and the order
        in which the spans appear in part B (a permutation of range(len(spans)))."""
        part_a: list[int] = [] if self.cls_id is None else [self.cls_id]
        mask_position: list[int] = []
        cursor = 0
        for start, end in spans:
            if not cursor <= start < end <= len(ids):
                raise ConfigError(f"glm: spans must be sorted, non-empty and inside the text, got {spans}")
            part_a += ids[cursor:start]
            mask_position.append(len(part_a))
            part_a.append(self.mask_id)
            cursor = end
        part_a += ids[cursor:]
        n_a = len(part_a)
        input_ids, labels = list(part_a), [-100] * n_a
        position_ids, block_position_ids = list(range(n_a)), [0] * n_a
        for s in order:
            start, end = spans[s]
            span = ids[start:end]
            input_ids += [self.sop_id, *span]
            labels += [*span, self.eop_id]
            position_ids += [mask_position[s]] * (len(span) + 1)
            block_position_ids += list(range(1, len(span) + 2))
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "block_position_ids": block_position_ids,
            "prefix_length": [n_a],
        }

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows = []
        for example in examples:
            ids = self.text(self.ids_of(example))
            spans = self.sample_spans(ids)
            order = torch.randperm(len(spans), generator=self.generator).tolist()
            rows.append(self.infill_example(ids, spans, order))
        return self.collate(rows)

    def collate(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        inputs = [r["input_ids"] for r in rows]
        return {
            "input_ids": self.pad_right(inputs, self.pad_id),
            "attention_mask": self.attention_mask(inputs),
            "labels": self.pad_right([r["labels"] for r in rows], -100),
            "position_ids": self.pad_right([r["position_ids"] for r in rows], 0),
            "block_position_ids": self.pad_right([r["block_position_ids"] for r in rows], 0),
            "prefix_lengths": torch.tensor([r["prefix_length"][0] for r in rows], dtype=torch.long),
        }
