"""T5 span corruption (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", §3.1.4).

About 15% of the tokens ("noise") are dropped in spans of mean length 3. Each dropped span is replaced
in the encoder input by a unique sentinel, and the decoder predicts the dropped spans, each after its
sentinel:

    original: 今 天 天 气 真 好 ， 我 们 一 起 出 去 玩 吧
    inputs:   今 天 <extra_id_0> 好 ， 我 们 一 <extra_id_1> 去 玩 吧 </s>
    labels:   <extra_id_0> 天 气 真 <extra_id_1> 起 出 </s>     (noise exaggerated for the picture)

The counts are T5's: num_noise_tokens = round(length * noise_density) (at least 1, at most length-1),
num_noise_spans = round(num_noise_tokens / mean_noise_span_length) (at least 1). The noise tokens and
the non-noise tokens are each cut into num_noise_spans random non-empty pieces, and the pieces are
interleaved starting with non-noise, so the sequence always starts with kept text.

`random_spans_helper(inputs_length=512)` answers the pipeline's question "how many raw tokens do I
cut so that the corrupted input is 512 long?" (568 raw tokens -> 512 inputs, 114 targets).

Special tokens are never corrupted: a trailing eos is dropped (one is appended after corruption) and
the noise mask is drawn over the other tokens only; a special token inside the text keeps its place
and ends the noise span it falls in (the rest of the span gets its own sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from plmkit.config.fields import Range
from plmkit.data.objectives.base import Example, Objective
from plmkit.errors import ConfigError


def span_corruption_lengths(
    tokens_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(inputs_length, targets_length) after corrupting `tokens_length` raw tokens, eos included.

    Inputs keep the non-noise tokens plus one sentinel per span; targets hold the noise tokens plus
    one sentinel per span; both end with eos."""
    num_noise_tokens = int(round(tokens_length * noise_density))
    num_nonnoise_tokens = tokens_length - num_noise_tokens
    num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
    inputs = num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1
    targets = num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1
    return inputs, targets


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(tokens_length, targets_length): the longest raw length whose corrupted input fits in
    `inputs_length` tokens, and the target length it produces (T5's `random_spans_helper`).

    >>> random_spans_helper(512)
    (568, 114)
    """
    if inputs_length < 2:
        raise ConfigError(f"inputs_length must be at least 2 (text + eos), got {inputs_length}")

    def lengths(n: int) -> tuple[int, int]:
        return span_corruption_lengths(
            n,
            noise_density,
            mean_noise_span_length,
            extra_tokens_per_span_inputs,
            extra_tokens_per_span_targets,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    # T5's tweak: at density 0.5 make targets no longer than inputs (inputs is the round number)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Cut `num_items` into `num_segments` random non-empty pieces -> their lengths (num_segments,).

    Uniform over all compositions: choose num_segments-1 of the num_items-1 inner boundaries."""
    if num_segments <= 1:
        return torch.tensor([num_items])
    cuts = torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1
    edges = torch.cat((torch.tensor([0]), cuts.sort().values, torch.tensor([num_items])))
    return edges.diff()


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, generator: torch.Generator
) -> torch.Tensor:
    """Boolean (length,) noise mask with T5's exact counts; starts with non-noise."""
    orig_length = length
    length = max(length, 2)  # a 1-token text still gets a (truncated) 1 noise + 1 kept layout
    num_noise_tokens = min(max(int(round(length * noise_density)), 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens
    # a span of each kind per segment: both counts must allow num_noise_spans non-empty pieces
    num_noise_spans = min(num_noise_spans, num_noise_tokens, num_nonnoise_tokens)
    noise_lengths = random_segmentation(num_noise_tokens, num_noise_spans, generator)
    nonnoise_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans, generator)
    interleaved = torch.stack((nonnoise_lengths, noise_lengths), dim=1).reshape(-1)  # keep, noise, keep, ...
    span_starts = interleaved.cumsum(0)[:-1]
    starts = torch.zeros(length, dtype=torch.long)
    starts[span_starts] = 1
    span_number = starts.cumsum(0)  # 0 for the first kept piece, 1 for the first noise span, ...
    return (span_number.remainder(2) == 1)[:orig_length]


@dataclass(eq=False)
class SpanCorruptionObjective(Objective):
    """T5 span corruption for an encoder–decoder: input_ids/attention_mask for the encoder, labels
    (sentinel + span, ..., eos) for the decoder (the model shifts them right), decoder_attention_mask."""

    name = "t5_span"
    family = "seq2seq"

    noise_density: Annotated[float, Range(gt=0, lt=1)] = 0.15
    mean_noise_span_length: Annotated[float, Range(ge=1)] = 3.0
    sentinel_template: str = "<extra_id_{}>"  # sentinel i is template.format(i), i = 0, 1, ...

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eos_id = self.required_id("eos")
        self._special = set(self.special_ids().tolist())
        self._sentinels: list[int] = []
        self.sentinel_ids(1)  # fail at construction, not in the middle of training

    def sentinel_ids(self, count: int) -> list[int]:
        """Ids of the first `count` sentinels, looked up by token string (cached)."""
        while len(self._sentinels) < count:
            token = self.sentinel_template.format(len(self._sentinels))
            token_id = self.tokenizer.token_to_id(token)
            if token_id is None:
                have = len(self._sentinels)
                raise ConfigError(
                    f"t5_span needs sentinel token {token!r} but the tokenizer does not have it "
                    f"(it has {have} sentinels); add sentinels {self.sentinel_template.format(0)} .. "
                    f"{self.sentinel_template.format(count - 1)} as special tokens, or use shorter examples"
                )
            self._sentinels.append(token_id)
        return self._sentinels[:count]

    def noise_mask(self, length: int) -> torch.Tensor:
        return random_spans_noise_mask(
            length, self.noise_density, self.mean_noise_span_length, self.generator
        )

    def corrupt(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """(inputs, targets) for one example, both ending with eos."""
        if len(ids) > 1 and ids[-1] == self.eos_id:
            ids = ids[:-1]
        corruptible = [i for i, t in enumerate(ids) if t not in self._special]
        noise = [False] * len(ids)
        if corruptible:
            for i, is_noise in zip(corruptible, self.noise_mask(len(corruptible)).tolist()):
                noise[i] = is_noise
        inputs: list[int] = []
        targets: list[int] = []
        span = -1
        for i, token in enumerate(ids):
            if noise[i]:
                if i == 0 or not noise[i - 1]:  # a new span: its sentinel goes to both sides
                    span += 1
                    sentinel = self.sentinel_ids(span + 1)[span]
                    inputs.append(sentinel)
                    targets.append(sentinel)
                targets.append(token)
            else:
                inputs.append(token)
        inputs.append(self.eos_id)
        targets.append(self.eos_id)
        return inputs, targets

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        pairs = [self.corrupt(self.ids_of(example)) for example in examples]
        inputs = [p[0] for p in pairs]
        targets = [p[1] for p in pairs]
        decoder_attention_mask = self.attention_mask(targets)
        labels = self.pad_right(targets, -100)
        return {
            "input_ids": self.pad_right(inputs, self.pad_id),
            "attention_mask": self.attention_mask(inputs),
            "labels": labels,
            "decoder_attention_mask": decoder_attention_mask,
        }
