"""Entity-level precision / recall / F1 of tag sequences (NER, chunking), as fractions in 0..1.

They equal seqeval's `precision_score`, `recall_score`, `f1_score` and `classification_report`:
- mode="default": seqeval's default, the conlleval-compatible lenient chunking of `get_entities` (an I- or
  E- after O starts an entity, a type switch inside a chunk starts a new one; IOB1, IOB2 and IOBES tags).
- mode="strict": seqeval's mode="strict" with scheme=IOB2: an entity is exactly B-X followed by I-X's;
  an I- that does not continue a B- of its type is no entity, and E-/S- tags are an error.
Tags are "O", a bare prefix ("B") or PREFIX-TYPE ("B-PER"); the TYPE may itself hold dashes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

from plmkit.errors import ConfigError, DataError

Entity = tuple[str, int, int]  # (type, first index, last index inclusive)
_PREFIXES = {"default": "BIESO", "strict": "BIO"}


def _split_tag(tag: str, allowed: str = "BIESO") -> tuple[str, str]:
    """(prefix, type): "B-PER" -> ("B", "PER"); "O" -> ("O", "_"); a bare "B" -> ("B", "_") (seqeval's
    placeholder type). ValueError for anything else."""
    if tag and tag[0] in allowed and (len(tag) == 1 or tag[1] == "-"):
        return tag[0], tag[2:] or "_"
    raise ValueError(tag)


def _ends_before(prev: str, prev_type: str, prefix: str, type_: str) -> bool:
    """Whether the chunk open at the previous token closes before this one (conlleval's endOfChunk)."""
    if prev in "ES":
        return True
    if prev in "BI" and prefix in "BSO":
        return True
    return prev != "O" and prev_type != type_


def _starts_here(prev: str, prev_type: str, prefix: str, type_: str) -> bool:
    """Whether a new chunk starts at this token (conlleval's startOfChunk)."""
    if prefix in "BS":
        return True
    if prefix in "IE" and prev in "ESO":
        return True
    return prefix != "O" and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[Entity]:
    """The chunks of one tag sequence as (type, start, end inclusive), in seqeval's default (lenient,
    conlleval-compatible) semantics: `get_entities(["B-PER", "I-PER", "O", "I-LOC"])` ->
    [("PER", 0, 1), ("LOC", 3, 3)]."""
    entities: list[Entity] = []
    prev, prev_type, begin = "O", "_", 0
    for i, tag in enumerate([*tags, "O"]):  # a final O closes the last chunk
        try:
            prefix, type_ = _split_tag(tag)
        except ValueError:
            raise DataError(
                f"sequence labeling: tag {tag!r} at position {i} is not O, B, I, E, S or PREFIX-TYPE (B-PER); fix the tag set"
            ) from None
        if _ends_before(prev, prev_type, prefix, type_):
            entities.append((prev_type, begin, i - 1))
        if _starts_here(prev, prev_type, prefix, type_):
            begin = i
        prev, prev_type = prefix, type_
    return entities


def _strict_iob2_entities(tags: Sequence[str]) -> list[Entity]:
    """Well-formed IOB2 chunks only: B-X then the I-X's that follow (seqeval mode="strict", IOB2)."""
    entities: list[Entity] = []
    parts = [_split_tag(tag, _PREFIXES["strict"]) for tag in tags]
    i = 0
    while i < len(parts):
        prefix, type_ = parts[i]
        if prefix != "B":
            i += 1
            continue
        end = i + 1
        while end < len(parts) and parts[end] == ("I", type_):
            end += 1
        entities.append((type_, i, end - 1))
        i = end
    return entities


def _check_tags(sentences: list[list[str]], mode: str, side: str) -> None:
    allowed = _PREFIXES[mode]
    for s, tags in enumerate(sentences):
        for i, tag in enumerate(tags):
            try:
                _split_tag(tag, allowed)
            except ValueError:
                kinds = "O, B-, I-, E- or S-" if mode == "default" else "O, B- or I- (strict mode is IOB2)"
                raise DataError(
                    f"sequence labeling: {side} sentence {s} position {i} holds tag {tag!r}; tags must be {kinds}TYPE"
                ) from None


def _sentence_entities(sentences: list[list[str]], mode: str) -> set[tuple[int, str, int, int]]:
    """{(sentence index, type, start, end)} over all sentences."""
    extract = get_entities if mode == "default" else _strict_iob2_entities
    return {(s, *entity) for s, tags in enumerate(sentences) for entity in extract(tags)}


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """Precision, recall, F1 with 0 for an empty denominator (seqeval's zero_division default)."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(
    references: list[list[str]],
    predictions: list[list[str]],
    mode: Literal["default", "strict"] = "default",
) -> dict:
    """Micro {precision, recall, f1} over all entities, and per_type {TYPE: {precision, recall, f1,
    support}} for every type seen in either side (support = gold entities of that type)."""
    if mode not in _PREFIXES:
        raise ConfigError(f'sequence labeling: mode={mode!r} is unknown; use "default" or "strict"')
    if len(references) != len(predictions):
        raise DataError(
            f"sequence labeling: {len(predictions)} predicted sentences for {len(references)} reference sentences; give one per reference"
        )
    for s, (gold, pred) in enumerate(zip(references, predictions)):
        if len(gold) != len(pred):
            raise DataError(
                f"sequence labeling: sentence {s} has {len(gold)} reference tags but {len(pred)} predicted; give one tag per token"
            )
    _check_tags(references, mode, "reference")
    _check_tags(predictions, mode, "predicted")
    gold, pred = _sentence_entities(references, mode), _sentence_entities(predictions, mode)
    hits = gold & pred
    n_true, n_pred, n_tp = (Counter(e[1] for e in group) for group in (gold, pred, hits))
    per_type = {}
    for type_ in sorted(set(n_true) | set(n_pred)):
        p, r, f = _prf(n_tp[type_], n_pred[type_], n_true[type_])
        per_type[type_] = {"precision": p, "recall": r, "f1": f, "support": n_true[type_]}
    precision, recall, f1 = _prf(len(hits), len(pred), len(gold))
    return {"precision": precision, "recall": recall, "f1": f1, "per_type": per_type}
