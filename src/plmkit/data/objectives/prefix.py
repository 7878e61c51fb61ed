"""Prefix LM for the one-stack hybrid family: a bidirectional source, then a causal target.

    tokens          今 天 天 气 | 真 好 ， 我 们
    token_type_ids  0  0  0  0  | 1  1  1  1  1         prefix_lengths = 4
    labels          -  -  -  真 | 好 ， 我 们 -         (aligned: labels[t] is predicted at position t)

The source attends to itself in both directions; each target token sees the source and the target
before it (PrefixLM builds that mask from `prefix_lengths`). PrefixLM does not shift labels, so they are
aligned here: the last source position predicts the first target token, each target position the next
one, and the last position nothing. With append_eos=True an EOS is appended to every target, so the last
real target token predicts EOS and the model learns to stop.

Examples: token lists (or {"input_ids": [...]}) are split at a uniformly random point between
min_source_fraction and max_source_fraction of their length (at least one source and one target token);
{"source": [...], "target": [...]} examples keep their own split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from plmkit.data.objectives.base import Example, Objective, Probability
from plmkit.errors import ConfigError, DataError


@dataclass(eq=False)
class PrefixLMObjective(Objective):
    """input_ids, attention_mask (B, T), prefix_lengths (B,), token_type_ids, aligned labels."""

    name: ClassVar[str] = "prefix_lm"
    family: ClassVar[str] = "prefix"

    min_source_fraction: Probability = 0.2  # random split point: at least this share of the tokens is source
    max_source_fraction: Probability = 0.8  # ... and at most this share
    append_eos: bool = False  # append EOS to each target so the model learns to stop

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_source_fraction > self.max_source_fraction:
            raise ConfigError(
                f"objective 'prefix_lm': min_source_fraction={self.min_source_fraction} is larger than "
                f"max_source_fraction={self.max_source_fraction}"
            )
        self.eos_id = self.required_id("eos") if self.append_eos else None

    def split(self, example: Example, row: int, u: float) -> tuple[list[int], list[int]]:
        """(source, target) of one example; `u` uniform in [0, 1) places a random split."""
        if isinstance(example, dict) and "source" in example:
            source, target = list(example["source"]), list(example.get("target", []))
            if not target:
                raise DataError(f"example {row}: a prefix LM example needs a non-empty 'target'")
            return source, target
        ids = self.ids_of(example)
        fraction = self.min_source_fraction + u * (self.max_source_fraction - self.min_source_fraction)
        cut = min(max(round(fraction * len(ids)), 1), max(len(ids) - 1, 1))
        return ids[:cut], ids[cut:]

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise DataError("objective 'prefix_lm' got an empty batch")
        draws = self.uniform(len(examples)).tolist()
        pairs = [self.split(e, row, u) for row, (e, u) in enumerate(zip(examples, draws))]
        if self.eos_id is not None:
            pairs = [(s, t + [self.eos_id]) for s, t in pairs]
        seqs = [s + t for s, t in pairs]
        input_ids = self.pad_right(seqs, self.pad_id)  # (B, T)
        attention_mask = self.attention_mask(seqs)
        prefix_lengths = torch.tensor([len(s) for s, _ in pairs])  # (B,)
        positions = torch.arange(input_ids.shape[1])[None, :]  # (1, T)
        token_type_ids = ((positions >= prefix_lengths[:, None]) & attention_mask.bool()).long()
        # labels[t] = token t+1 for t from the last source position to the second-to-last real token
        next_ids = torch.cat((input_ids[:, 1:], input_ids.new_full((len(seqs), 1), -100)), dim=1)
        lengths = attention_mask.sum(1, keepdim=True)
        predicts = (positions >= prefix_lengths[:, None] - 1) & (positions < lengths - 1)
        labels = next_ids.masked_fill(~predicts, -100)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prefix_lengths": prefix_lengths,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
