"""UniLM mixed masks (Dong et al. 2019, "Unified Language Model Pre-training"): one shared stack, and
per example one of four self-attention masks, in the paper's proportions 1/3, 1/6, 1/6, 1/3:

    bidirectional  [CLS] X [SEP]          every token sees every token            MLM (BERT)
    left-to-right  [CLS] X [SEP]          position t sees positions <= t          MLM (cloze, left context)
    right-to-left  [CLS] X [SEP]          position t sees positions >= t          MLM (cloze, right context)
    seq2seq        [CLS] S [SEP] T [SEP]  source sees source; target sees source  MLM on S + causal LM on T
                                          and the target before it

Bidirectional and unidirectional examples use BERT masking (15% of the text tokens, 80% [MASK] / 10%
random / 10% unchanged; labels at the selected positions). Seq2seq examples are "混合 Mask & Causal":
the source is MLM-masked as above and the target is predicted causally, with labels ALIGNED to positions
(PrefixLM does not shift): the last source position ([SEP] ending S) predicts T[0], T[i] predicts T[i+1],
and T[-1] predicts the final [SEP] (so the model learns to stop); the final [SEP] carries no label.

    [CLS] 今 [MASK] 天 [SEP] | 气  真  好 [SEP]        source 今天天, target 气真好, 天 (2) selected
    -100 -100  天  -100  气  | 真  好 [SEP] -100        token_type_ids 0 0 0 0 0 | 1 1 1 1

The split of a plain example into S and T is uniform over 1 .. n-1 text tokens (both non-empty); a dict
example may fix it with "source_length". A text of one token cannot be split and falls back to
bidirectional. One batch mixes mask kinds, so attention_mask is a boolean (B, T, T) with padding folded
in (rows: queries, columns: keys; a padding key is never visible); token_type_ids are 0 for
[CLS] S [SEP] and 1 for T [SEP]. A leading [CLS] and a trailing [SEP] of an example are stripped and
re-added; special tokens are never masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from plmkit.data.objectives.base import Example, Objective, Probability, Rate
from plmkit.data.objectives.mlm import check_replace_probs, mask_tokens, selectable
from plmkit.errors import ConfigError
from plmkit.model import masks

KINDS = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")
BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ = range(4)


@dataclass(eq=False)
class UniLMObjective(Objective):
    name: ClassVar[str] = "unilm"
    family: ClassVar[str] = "prefix"

    proportions: Sequence[float] = (1 / 3, 1 / 6, 1 / 6, 1 / 3)  # bidirectional, l2r, r2l, seq2seq
    mlm_probability: Rate = 0.15
    mask_replace_prob: Probability = 0.8
    random_replace_prob: Probability = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        props = [float(p) for p in self.proportions]
        if len(props) != 4 or min(props) < 0 or abs(sum(props) - 1.0) > 1e-6:
            raise ConfigError(
                f"unilm: proportions must be 4 non-negative numbers summing to 1 ({', '.join(KINDS)}), "
                f"got {list(self.proportions)}"
            )
        self._probs = torch.tensor(props)
        check_replace_probs(
            self.name, mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob
        )
        self.cls_id = self.required_id("cls")
        self.sep_id = self.required_id("sep")
        self.required_id("mask")

    def text(self, ids: list[int]) -> list[int]:
        start, end = 0, len(ids)
        if end - start > 1 and ids[start] == self.cls_id:
            start += 1
        if end - start > 1 and ids[end - 1] == self.sep_id:
            end -= 1
        return ids[start:end]

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        return self.collate_with_kinds(examples)[0]

    def collate_with_kinds(self, examples: Sequence[Example]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch and the mask kind of each row (B,) (indices into KINDS)."""
        kinds = torch.multinomial(self._probs, len(examples), replacement=True, generator=self.generator)
        sequences, prefix_lengths = [], []
        for row, example in enumerate(examples):
            text = self.text(self.ids_of(example))
            if kinds[row] == SEQ2SEQ and len(text) < 2:
                kinds[row] = BIDIRECTIONAL
            if kinds[row] == SEQ2SEQ:
                split = example.get("source_length") if isinstance(example, dict) else None
                if split is None:
                    split = int(torch.randint(1, len(text), (1,), generator=self.generator))
                elif not 1 <= split < len(text):
                    raise ConfigError(
                        f"unilm: example {row} has source_length {split} outside 1..{len(text) - 1}"
                    )
                sequences.append([self.cls_id, *text[:split], self.sep_id, *text[split:], self.sep_id])
                prefix_lengths.append(split + 2)
            else:
                sequences.append([self.cls_id, *text, self.sep_id])
                prefix_lengths.append(len(sequences[-1]))
        input_ids = self.pad_right(sequences, self.pad_id)  # (B, T)
        padding = self.attention_mask(sequences).bool()  # (B, T)
        b, t = input_ids.shape
        prefix = torch.tensor(prefix_lengths)
        positions = torch.arange(t)[None, :]  # (1, T)
        seq2seq = (kinds == SEQ2SEQ)[:, None]  # (B, 1)
        in_source = positions < prefix[:, None]  # (B, T)

        # MLM everywhere except the target of seq2seq rows
        allowed = selectable(input_ids, padding, self.special_ids()) & (in_source | ~seq2seq)
        selected = allowed & (self.uniform(b, t) < self.mlm_probability)
        inputs, labels = mask_tokens(
            input_ids,
            selected,
            self.tokenizer,
            self.generator,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        # seq2seq target: position p predicts token p+1, from the last source position ([SEP]) up to
        # the last target token (which predicts the closing [SEP])
        lengths = padding.sum(1, keepdim=True)
        causal_rows = seq2seq & (positions >= prefix[:, None] - 1) & (positions < lengths - 1)
        next_tokens = torch.cat((input_ids[:, 1:], input_ids[:, :1]), dim=1)
        labels = torch.where(causal_rows, next_tokens, labels)

        return {
            "input_ids": inputs,
            "attention_mask": self.attention_masks(kinds, prefix, padding),
            "token_type_ids": (seq2seq & ~in_source & padding).long(),
            "labels": labels,
        }, kinds

    @staticmethod
    def attention_masks(kinds: torch.Tensor, prefix: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """(B, T, T) bool: each row's mask kind, and no query sees a padding key."""
        t = padding.shape[1]
        by_kind = {
            BIDIRECTIONAL: masks.bidirectional(t, t)[0],  # (1, T, T)
            LEFT_TO_RIGHT: masks.causal(t, t)[0],
            RIGHT_TO_LEFT: masks.right_to_left(t, t)[0],
            SEQ2SEQ: masks.prefix(prefix, t, t)[:, 0],  # (B, T, T)
        }
        out = torch.zeros(len(kinds), t, t, dtype=torch.bool)
        for kind, mask in by_kind.items():
            rows = kinds == kind
            if rows.any():
                out[rows] = mask.expand(len(kinds), t, t)[rows]
        return out & padding[:, None, :]
