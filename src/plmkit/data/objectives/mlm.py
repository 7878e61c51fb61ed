"""Masked language modelling (BERT): predict randomly selected tokens from both sides.

Selection is a per-token Bernoulli draw with probability `mlm_probability` over the non-special, non-pad
tokens (as BERT's reference code and transformers' DataCollatorForLanguageModeling do), so the rate is
exact in expectation for every sequence length; a short sequence may get no masked token at all.
Of the selected tokens, `mask_replace_prob` (80%) become [MASK], `random_replace_prob` (10%) a random
non-special token and the rest (10%) stay unchanged; `labels` hold the original ids there, -100 elsewhere.

`mask_tokens` (the 80/10/10 step) is shared by the other masked objectives (whole-word, span, ...):

    inputs, labels = mask_tokens(input_ids, selected, tokenizer, generator)

Tests may force the selection: a dict example {"input_ids": [...], "selected": [positions]} masks
exactly those positions (the 80/10/10 step still applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from plmkit.data.objectives.base import Example, Objective, Probability, Rate
from plmkit.errors import ConfigError, DataError


def check_replace_probs(objective: str, **probs: float) -> None:
    """The replacement proportions (each a Probability, checked by its declared range) leave a
    non-negative 'keep unchanged' share."""
    if sum(probs.values()) > 1 + 1e-9:
        listed = " + ".join(f"{k}={v}" for k, v in probs.items())
        raise ConfigError(
            f"objective {objective!r}: {listed} exceeds 1; the rest is the 'keep unchanged' share"
        )


def non_special_ids(tokenizer: Any) -> torch.Tensor:
    """Every vocabulary id that is not a special token: the pool random replacements are drawn from."""
    special = torch.tensor(sorted({i for i in tokenizer.all_special_ids if i is not None}), dtype=torch.long)
    ids = torch.arange(tokenizer.vocab_size)
    return ids[~torch.isin(ids, special)]


def selectable(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor
) -> torch.Tensor:
    """(B, T) bool: real (not padding, found from the attention mask) and not special tokens."""
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids)


def mask_tokens(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    tokenizer: Any,
    generator: torch.Generator,
    *,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 step: returns (inputs, labels) for the (B, T) `selected` positions.

    Each selected token independently becomes [MASK] with probability `mask_replace_prob`, a random
    non-special token with `random_replace_prob`, and stays unchanged otherwise. `labels` is the
    original id at selected positions and -100 elsewhere. `groups` (B, T) long, optional: selected
    positions with the same group id >= 0 in a row share one decision (SpanBERT replaces whole spans).
    The generator draws the same amount of randomness for a given shape, whatever is selected."""
    mask_id = tokenizer.mask_id
    if mask_id is None:
        raise ConfigError("masking needs a tokenizer with a mask token; train the tokenizer with [MASK]")
    decision = torch.rand(input_ids.shape, generator=generator)  # (B, T)
    pool = non_special_ids(tokenizer)
    random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator)]  # (B, T)
    if groups is not None:
        decision = _share_within_groups(decision, groups)
    to_mask = selected & (decision < mask_replace_prob)
    to_random = selected & ~to_mask & (decision < mask_replace_prob + random_replace_prob)
    inputs = input_ids.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = input_ids.masked_fill(~selected, -100)
    return inputs, labels


def _share_within_groups(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Copy, within each row, the value at a group's first position to all of the group's positions."""
    b, t = values.shape
    grouped = (groups >= 0).reshape(-1)
    flat_pos = torch.arange(b * t)[grouped]
    keys = (groups + torch.arange(b)[:, None] * (int(groups.max()) + 1)).reshape(-1)[grouped]
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(unique),), b * t).scatter_reduce(0, inverse, flat_pos, reduce="amin")
    out = values.reshape(-1).clone()
    out[flat_pos] = out[first[inverse]]
    return out.reshape(b, t)


def forced_selection(examples: Sequence[Example], allowed: torch.Tensor) -> dict[int, torch.Tensor]:
    """Rows whose dict example names its `selected` positions -> that row's (T,) bool selection."""
    forced = {}
    for row, example in enumerate(examples):
        if not isinstance(example, dict) or example.get("selected") is None:
            continue
        chosen = torch.zeros(allowed.shape[1], dtype=torch.bool)
        for pos in example["selected"]:
            if not 0 <= pos < allowed.shape[1] or not allowed[row, pos]:
                raise DataError(
                    f"example {row}: selected position {pos} is not a maskable token (out of range, padding "
                    f"or a special token)"
                )
            chosen[pos] = True
        forced[row] = chosen
    return forced


def stochastic_round(values: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """floor(x + u): an integer whose expectation is exactly x (for per-example masking budgets)."""
    return torch.floor(values + uniform).long()


@dataclass(eq=False)
class MLMObjective(Objective):
    """BERT masked LM: per-token Bernoulli selection, then 80% [MASK] / 10% random / 10% unchanged."""

    name: ClassVar[str] = "mlm"
    family: ClassVar[str] = "masked"

    mlm_probability: Rate = 0.15  # share of non-special tokens selected for prediction
    mask_replace_prob: Probability = 0.8  # of the selected: replaced by [MASK]
    random_replace_prob: Probability = 0.1  # of the selected: replaced by a random non-special token

    def __post_init__(self) -> None:
        super().__post_init__()
        check_replace_probs(
            self.name, mask_replace_prob=self.mask_replace_prob, random_replace_prob=self.random_replace_prob
        )
        self.required_id("mask")

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        ids = [self.ids_of(e) for e in examples]
        input_ids = self.pad_right(ids, self.pad_id)  # (B, T)
        attention_mask = self.attention_mask(ids)
        allowed = selectable(input_ids, attention_mask, self.special_ids())
        selected = allowed & (self.uniform(*input_ids.shape) < self.mlm_probability)
        for row, chosen in forced_selection(examples, allowed).items():
            selected[row] = chosen
        inputs, labels = mask_tokens(
            input_ids,
            selected,
            self.tokenizer,
            self.generator,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}
