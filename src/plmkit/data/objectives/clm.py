"""Causal language modelling (GPT): every real token is a label; the model shifts labels itself.

    今 天 天 气 真 好 ， 我 们 一 起 出 去 玩 吧 [PAD] ...
    labels = the same ids, -100 only where the attention mask says padding

Padding is found from the sequence lengths (the attention mask), never by comparing ids with the pad
id: when pad and eos share an id (GPT-2 style tokenizers), comparing ids would drop the EOS label and
the model would never learn to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from plmkit.data.objectives.base import Example, Objective


@dataclass(eq=False)
class CLMObjective(Objective):
    """Next-token prediction: input_ids, attention_mask, labels (= input ids, -100 at padding)."""

    name: ClassVar[str] = "clm"
    family: ClassVar[str] = "causal"

    def __post_init__(self) -> None:
        super().__post_init__()

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        ids = [self.ids_of(e) for e in examples]
        input_ids = self.pad_right(ids, self.pad_id)  # (B, T)
        attention_mask = self.attention_mask(ids)  # (B, T) from lengths
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
