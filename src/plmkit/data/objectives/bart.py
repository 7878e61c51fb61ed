"""BART denoising (Lewis et al. 2020): corrupt a document, let the decoder reconstruct the original.

Noising functions, applied in this order, each switchable:
- sentence permutation (`permute_sentences`, probability per document, default 1.0): the document is
  cut after every sentence-end token ("." "。" "!" "?" ... by token string) and the sentences shuffled;
- token deletion (`deletion_ratio`, default 0): each token deleted with this probability;
- text infilling (`mask_ratio`, default 0.3; 0 disables): span lengths ~ Poisson(`poisson_lambda`=3)
  are drawn until they cover mask_ratio of the tokens; each span becomes ONE mask token, and a span of
  length 0 inserts a mask (the model must learn how many tokens are missing, including none);
- document rotation (`rotate_probability`, default 0): the document starts at a random token.
The defaults are the paper's best combination (text infilling + sentence permutation).

    original: 今天天气真好。我们一起出去玩吧。
    inputs:   <s> 我 们 <mask> 去 玩 吧 。 今 天 <mask> 真 好 。 </s>
    labels:   <s> 今 天 天 气 真 好 。 我 们 一 起 出 去 玩 吧 。 </s>

labels = [bos] + original + [eos] (bos only when the tokenizer has one); the model shifts them right.
Leading bos/cls and trailing eos/sep of an example are stripped first and re-added once. Special
tokens are never masked or deleted; spans are laid out over the other tokens, so a special token
inside the text stays and ends the span it falls in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from plmkit.data.objectives.base import Example, Objective, Positive, Probability
from plmkit.errors import ConfigError

DEFAULT_SENTENCE_ENDS = (".", "。", "!", "?", "！", "？")


@dataclass(eq=False)
class BartDenoisingObjective(Objective):
    name = "bart"
    family = "seq2seq"

    mask_ratio: Probability = 0.3  # text infilling: share of tokens inside masked spans (0 = off)
    poisson_lambda: Positive = 3.0  # mean span length
    permute_sentences: Probability = 1.0  # probability that a document's sentences are shuffled
    deletion_ratio: Probability = 0.0  # token deletion: probability that each token is deleted
    rotate_probability: Probability = 0.0  # probability that a document is rotated
    sentence_end_tokens: tuple[str, ...] = DEFAULT_SENTENCE_ENDS  # token strings that end a sentence

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eos_id = self.required_id("eos")
        self.bos_id = self.tokenizer.bos_id
        self.mask_id = self.required_id("mask") if self.mask_ratio > 0 else None
        self._special = set(self.special_ids().tolist())
        ends = [self.tokenizer.token_to_id(t) for t in self.sentence_end_tokens]
        self.sentence_end_ids = {i for i in ends if i is not None}
        if self.permute_sentences > 0 and not self.sentence_end_ids:
            raise ConfigError(
                f"bart: none of the sentence_end_tokens {list(self.sentence_end_tokens)} is in the vocabulary; "
                "set sentence_end_tokens to the tokenizer's sentence-final tokens or permute_sentences: 0"
            )
        strip = (self.bos_id, self.tokenizer.cls_id), (self.eos_id, self.tokenizer.sep_id)
        self._leading = {i for i in strip[0] if i is not None}
        self._trailing = {i for i in strip[1] if i is not None}

    # ---- the noising functions, each on a list of ids ------------------------------------------
    def body(self, ids: list[int]) -> list[int]:
        """The document without a leading bos/cls and a trailing eos/sep (they are re-added once)."""
        return self.strip_ends(ids, self._leading, self._trailing)

    def permute(self, ids: list[int]) -> list[int]:
        """Shuffle the sentences (each ends at a sentence-end token; the last may have none)."""
        sentences: list[list[int]] = [[]]
        for token in ids:
            sentences[-1].append(token)
            if token in self.sentence_end_ids:
                sentences.append([])
        sentences = [s for s in sentences if s]
        order = torch.randperm(len(sentences), generator=self.generator).tolist()
        return [token for i in order for token in sentences[i]]

    def delete(self, ids: list[int]) -> list[int]:
        drop = (self.uniform(len(ids)) < self.deletion_ratio).tolist()
        return [t for t, d in zip(ids, drop) if not d or t in self._special]

    def span_lengths(self, num_to_mask: int) -> list[int]:
        """Poisson span lengths (zeros included) drawn until they cover num_to_mask; the last is clipped."""
        lengths: list[int] = []
        total = 0
        while total < num_to_mask:
            draws = (
                torch.poisson(
                    torch.full((max(num_to_mask // 2, 4),), self.poisson_lambda), generator=self.generator
                )
                .long()
                .tolist()
            )
            for n in draws:
                lengths.append(min(n, num_to_mask - total))
                total += lengths[-1]
                if total >= num_to_mask:
                    break
        return lengths

    def infill(self, ids: list[int]) -> list[int]:
        """Replace Poisson-length spans of non-special tokens by one mask each (0-length: insert one)."""
        corruptible = [i for i, t in enumerate(ids) if t not in self._special]
        n = len(corruptible)
        num_to_mask = int(math.ceil(n * self.mask_ratio)) if n else 0
        if num_to_mask == 0:
            return list(ids)
        lengths = self.span_lengths(num_to_mask)
        # Lay the spans into distinct gaps between the n - num_to_mask kept tokens (gap g = before kept
        # token g), so no two spans touch and every span stays one mask; spans keep their drawn order.
        kept = n - num_to_mask
        gaps = kept + 1
        if len(lengths) <= gaps:
            where = torch.randperm(gaps, generator=self.generator)[: len(lengths)].sort().values
        else:  # tiny documents: more spans than gaps, some spans share a gap
            where = torch.randint(gaps, (len(lengths),), generator=self.generator).sort().values
        # span s covers corruptible indices where[s] + (tokens of earlier spans) onwards
        span_of = [-1] * n  # corruptible index -> its span number, -1 when kept
        inserts = [0] * (n + 1)  # masks inserted by 0-length spans before corruptible index c
        offset = 0
        for s, (gap, length) in enumerate(zip(where.tolist(), lengths)):
            start = gap + offset
            if length == 0:
                inserts[start] += 1
            span_of[start : start + length] = [s] * length
            offset += length
        out: list[int] = []
        c = 0  # corruptible index of the next non-special token
        open_span = -1  # the span whose mask was just written (its other tokens are dropped)
        for token in ids:
            if token in self._special:  # kept in place; a span across it gets a second mask after it
                out.append(token)
                open_span = -1
                continue
            out.extend([self.mask_id] * inserts[c])
            s = span_of[c]
            if s < 0:
                out.append(token)
            elif s != open_span:
                out.append(self.mask_id)
            open_span = s
            c += 1
        out.extend([self.mask_id] * inserts[n])
        return out

    def rotate(self, ids: list[int]) -> list[int]:
        if len(ids) < 2:
            return ids
        start = int(torch.randint(1, len(ids), (1,), generator=self.generator))
        return ids[start:] + ids[:start]

    def noise(self, ids: list[int]) -> list[int]:
        """The corrupted document body (no bos/eos)."""
        if self.permute_sentences > 0 and float(self.uniform(1)) < self.permute_sentences:
            ids = self.permute(ids)
        if self.deletion_ratio > 0:
            ids = self.delete(ids)
        if self.mask_ratio > 0:
            ids = self.infill(ids)
        if self.rotate_probability > 0 and float(self.uniform(1)) < self.rotate_probability:
            ids = self.rotate(ids)
        return ids

    # ---- the batch ------------------------------------------------------------------------------
    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        bos = [self.bos_id] if self.bos_id is not None else []
        inputs, targets = [], []
        for example in examples:
            body = self.body(self.ids_of(example))
            inputs.append(bos + self.noise(body) + [self.eos_id])
            targets.append(bos + body + [self.eos_id])
        return {
            "input_ids": self.pad_right(inputs, self.pad_id),
            "attention_mask": self.attention_mask(inputs),
            "labels": self.pad_right(targets, -100),
            "decoder_attention_mask": self.attention_mask(targets),
        }
