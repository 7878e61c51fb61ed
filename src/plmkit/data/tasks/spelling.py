"""Chinese spelling correction (CSC) data: character-aligned examples for plmkit.model.csc.SpellingCorrector,
reading its predictions back into sentences, and a non-neural confusion baseline.

A CSC pair (source, target) has one character per position on both sides (SIGHAN: the target is the
source with some characters replaced). The model sees ONE token per character, never the tokenizer's
segmentation (which would merge "2015" or "hello" into fewer tokens and break the alignment):

    source  我 跟 我 朋 唷          input_ids         [CLS] 我 跟 我 朋 唷 [SEP]
    target  我 跟 我 朋 友          labels            -100  我 跟 我 朋 友 -100
                                    detection_labels  -100  0  0  0  0  1  -100

Predictions (`predict_ids`): the argmax of the correction logits at every position, in the layout of
input_ids, so position i + 1 holds character i's prediction ([CLS] is position 0). Padding positions
keep their input id. The detection head is not used at inference (as in pycorrector's macbert4csc).
`apply_corrections` turns one row of them into the corrected sentence, of the source's length.
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from plmkit.errors import ConfigError, DataError

IGNORE = -100  # no loss at this position (the models' convention)
CHAR_OFFSET = 1  # character i sits at position i + 1, after [CLS]


def _role_id(tokenizer: Any, role: str) -> int:
    token_id = tokenizer.special_id(role)
    if token_id is None:
        raise ConfigError(
            f"spelling correction needs a tokenizer with a {role} token (a Chinese BERT vocabulary: "
            "[CLS] [SEP] [UNK], one token per character); this one has none"
        )
    return token_id


# tokenizer -> (its vocabulary size, {character: id}): each character is encoded once; tokens added to
# the tokenizer since (a new size) start a new table
_CHAR_IDS: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, int]]] = weakref.WeakKeyDictionary()


def char_ids(tokenizer: Any, text: str) -> list[int]:
    """One id per CHARACTER of `text` (len(result) == len(text)): the token the tokenizer makes of that
    character alone (so its normalisation applies: "A" -> "a" in an uncased vocabulary), or the unk id
    when it makes none or several of it (a character out of the vocabulary, whitespace, a byte-level
    BPE split). A space therefore becomes [UNK], in source and target alike."""
    unk = _role_id(tokenizer, "unk")
    size, known = _CHAR_IDS.get(tokenizer, (-1, {}))
    if size != tokenizer.vocab_size:
        known = {}
        _CHAR_IDS[tokenizer] = (tokenizer.vocab_size, known)
    new = list(dict.fromkeys(c for c in text if c not in known))
    if new:
        encoded = tokenizer.encode_batch(new)  # one backend call for the characters not seen before
        known.update((c, ids[0] if len(ids) == 1 else unk) for c, ids in zip(new, encoded, strict=True))
    return [known[c] for c in text]


def csc_example(tokenizer: Any, source: str, target: str, max_length: int) -> dict[str, list[int]]:
    """One training example: input_ids ([CLS] source characters [SEP]), attention_mask, labels (the
    target character ids at the character positions, -100 on [CLS] / [SEP]) and detection_labels
    (1 where the source character differs from the target's, 0 at the other characters, -100 on
    [CLS] / [SEP]). Characters past `max_length - 2` are dropped: the model never sees them, and
    `apply_corrections` copies them unchanged."""
    if len(source) != len(target):
        raise DataError(
            f"CSC pair of unequal lengths ({len(source)} source vs {len(target)} target characters): "
            f"source {source[:20]!r}...; spelling correction pairs are character-aligned"
        )
    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 ([CLS], a character, [SEP]), got {max_length}")
    cls, sep = _role_id(tokenizer, "cls"), _role_id(tokenizer, "sep")
    room = max_length - 2
    source, target = source[:room], target[:room]
    wrong = [int(s != t) for s, t in zip(source, target, strict=True)]
    return {
        "input_ids": [cls, *char_ids(tokenizer, source), sep],
        "attention_mask": [1] * (len(source) + 2),
        "labels": [IGNORE, *char_ids(tokenizer, target), IGNORE],
        "detection_labels": [IGNORE, *wrong, IGNORE],
    }


def pad_csc_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """csc_example dicts -> (B, T) int64 tensors, right-padded to the longest: input_ids with `pad_id`,
    attention_mask with 0, labels and detection_labels with -100."""
    if not examples:
        raise DataError("pad_csc_batch got no examples")
    length = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE, "detection_labels": IGNORE}
    batch = {}
    for key, value in fill.items():
        rows = [list(e[key]) + [value] * (length - len(e[key])) for e in examples]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


@torch.no_grad()
def predict_ids(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T) corrected ids: the correction argmax at every real position, the input id at padding.
    logits (B, T, V) from SpellingCorrector; row b, position i + 1 is character i's prediction."""
    predicted = logits.argmax(dim=-1)
    if attention_mask is None:
        return predicted
    return torch.where(attention_mask.bool(), predicted, input_ids)


def apply_corrections(source: str, predicted_ids: Sequence[int] | torch.Tensor, tokenizer: Any) -> str:
    """The corrected sentence, exactly as long as `source`. `predicted_ids` is one row of `predict_ids`
    (position i + 1 for character i). Character i becomes the predicted token only when that token is a
    single character, is not special (so never [UNK], [SEP], ...), is not whitespace, and differs from
    the token of the source character itself (so an unchanged "A" stays "A", not the vocabulary's "a");
    otherwise, and past the end of the row (truncated characters), the source character is kept."""
    if isinstance(predicted_ids, torch.Tensor):
        predicted_ids = predicted_ids.tolist()
    own = char_ids(tokenizer, source)
    specials = set(tokenizer.all_special_ids)
    out = []
    for i, char in enumerate(source):
        position = i + CHAR_OFFSET
        if position >= len(predicted_ids):
            out.append(char)
            continue
        token_id = int(predicted_ids[position])
        token = None if token_id == own[i] or token_id in specials else tokenizer.id_to_token(token_id)
        # len 1 also rules out WordPiece continuations ("##x") and multi-character tokens
        out.append(token if token is not None and len(token) == 1 and not token.isspace() else char)
    return "".join(out)


class ConfusionBaseline:
    """A non-neural CSC baseline: the corrections seen in training, applied to characters that were
    wrong in training more often than they were right.

    `fit` counts, over character-aligned (source, target) pairs, each (wrong character -> its
    correction) at the positions where they differ, and how often each character appears correctly:
    every character of every target counts as one correct appearance. `correct(text)` replaces a
    character c by its most frequent correction (ties: the lowest code point) when
    wrong(c) / (wrong(c) + right(c)) > threshold; the default 0.5 means "wrong more often than right".
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = threshold
        self.corrections: dict[str, Counter[str]] = defaultdict(Counter)  # wrong char -> right chars
        self.right: Counter[str] = Counter()  # char -> correct appearances

    @classmethod
    def fit(cls, pairs: Iterable[tuple[str, str]], threshold: float = 0.5) -> ConfusionBaseline:
        baseline = cls(threshold)
        for number, (source, target) in enumerate(pairs, start=1):
            if len(source) != len(target):
                raise DataError(
                    f"pair {number}: source has {len(source)} characters, target {len(target)}; "
                    "spelling correction pairs are character-aligned"
                )
            baseline.right.update(target)
            for s, t in zip(source, target, strict=True):
                if s != t:
                    baseline.corrections[s][t] += 1
        return baseline

    def replacement(self, char: str) -> str | None:
        """What `correct` turns `char` into, or None when it stays."""
        seen = self.corrections.get(char)
        if not seen:
            return None
        wrong = sum(seen.values())
        if wrong / (wrong + self.right[char]) <= self.threshold:
            return None
        return min(seen, key=lambda right: (-seen[right], right))

    def correct(self, text: str) -> str:
        """`text` with each character replaced as `replacement` says (same length)."""
        return "".join(self.replacement(c) or c for c in text)
