"""Extractive question answering (SQuAD / CMRC): question + context -> windows of token ids, and
start / end logits -> answer texts, as transformers' `run_qa.py` does it.

A context longer than the model's window is cut into overlapping windows ("features"), each
`[CLS] question [SEP] context-window [SEP]` (the tokenizer's own pair template), consecutive windows
sharing `doc_stride` context tokens (Hugging Face's `stride`). Training labels a window with the
token indices of the answer's first and last tokens, or 0 (the first token, [CLS]) when the window
does not hold the whole answer. Prediction scores every span of context tokens in every window of
an example by start_logit + end_logit and maps the best back to characters of the context.

    features = qa_features(tok, question, context, example_index=7, answer_start=42, answer_text="1912")
    # model -> start_logits, end_logits: one (T_i,) row per feature
    best_answers(features, start_logits, end_logits, context)  # [("1912", 17.3), ...], best first
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.tokenizer.base import Tokenizer

CONTEXT = 1  # the context is the second sequence of the pair (Encoding.sequence_ids)


@dataclass
class QAFeature:
    """One window of one example. All lists have one entry per token (T <= max_length)."""

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # context characters [start, end) of context tokens, else None
    example_index: int
    start_position: int = 0  # token index of the answer's first token; 0 when the window lacks it
    end_position: int = 0  # token index of the answer's last token (inclusive)


def qa_features(
    tokenizer: Tokenizer,
    question: str,
    context: str,
    example_index: int,
    max_length: int = 384,
    doc_stride: int = 128,
    answer_start: int | None = None,
    answer_text: str | None = None,
) -> list[QAFeature]:
    """The windows of one example, in context order (one when the context fits).

    Only the context is truncated: each window holds `max_length - len(question tokens) - n_special`
    context tokens and starts `doc_stride` tokens before the previous window's end. With
    `answer_start` (a character index into `context`) and `answer_text`, each feature carries the
    answer's token positions (0 and 0 when the window does not contain the whole answer).
    """
    if (answer_start is None) != (answer_text is None):
        raise DataError(f"example {example_index}: answer_start and answer_text must be given together")
    backend = tokenizer.backend
    question_enc = backend.encode(question, add_special_tokens=False)
    context_enc = backend.encode(context, add_special_tokens=False)
    n_special = backend.num_special_tokens_to_add(is_pair=True)
    room = max_length - len(question_enc.ids) - n_special  # context tokens per window
    if room < 1:
        raise DataError(
            f"example {example_index}: the question has {len(question_enc.ids)} tokens, which with "
            f"{n_special} special tokens leaves no room for the context in max_length={max_length}; "
            "raise data.max_length or shorten the questions"
        )
    if doc_stride >= room:
        raise ConfigError(
            f"doc_stride={doc_stride} must be smaller than the {room} context tokens a window holds "
            f"(example {example_index}: max_length={max_length} - {len(question_enc.ids)} question tokens "
            f"- {n_special} special tokens); lower doc_stride or raise max_length"
        )
    context_enc.truncate(room, stride=doc_stride)  # the first window; the others in .overflowing
    features = []
    for window in [context_enc, *context_enc.overflowing]:
        encoding = backend.post_process(question_enc, window, add_special_tokens=True)
        is_context = [s == CONTEXT for s in encoding.sequence_ids]
        offsets = [tuple(o) if c else None for o, c in zip(encoding.offsets, is_context, strict=True)]
        feature = QAFeature(list(encoding.ids), list(encoding.type_ids), offsets, example_index)
        if answer_start is not None:
            span = _answer_tokens(offsets, answer_start, answer_start + len(answer_text))
            feature.start_position, feature.end_position = span or (0, 0)
        features.append(feature)
    return features


def _answer_tokens(
    offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int
) -> tuple[int, int] | None:
    """Token indices of the first and last answer tokens, or None when the window lacks part of it."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return None
    start = max(i for i in context if offsets[i][0] <= start_char)  # the token holding start_char
    end = min(i for i in context if offsets[i][1] >= end_char)  # the token holding end_char - 1
    return start, end


def best_answers(
    features: Sequence[QAFeature],
    start_logits: Sequence[Sequence[float]] | torch.Tensor,
    end_logits: Sequence[Sequence[float]] | torch.Tensor,
    context: str,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[tuple[str, float]]:
    """The `n_best` answers of one example over all its windows, best first: (text, score).

    `start_logits[i]` / `end_logits[i]` score the tokens of `features[i]` (rows may be padded
    beyond the feature's length). A span is a start and an end context token with
    end >= start and at most `max_answer_length` tokens; its score is start_logit + end_logit.
    Unlike run_qa.py, every such span is scored (not only the top-n starts x top-n ends) and a
    character span found in several overlapping windows appears once, with its best score.
    Empty when no window has a context token.
    """
    if not len(features) == len(start_logits) == len(end_logits):
        raise ShapeError(
            f"{len(features)} features but {len(start_logits)} start and {len(end_logits)} end logit rows"
        )
    best: dict[tuple[int, int], float] = {}  # (start_char, end_char) -> best score
    for feature, starts, ends in zip(features, start_logits, end_logits, strict=True):
        n = len(feature.input_ids)
        start_row = torch.as_tensor(starts, dtype=torch.float64).flatten()
        end_row = torch.as_tensor(ends, dtype=torch.float64).flatten()
        if len(start_row) < n or len(end_row) < n:
            raise ShapeError(
                f"feature of example {feature.example_index} has {n} tokens but "
                f"{len(start_row)} start and {len(end_row)} end logits"
            )
        is_context = torch.tensor([o is not None for o in feature.offsets])
        position = torch.arange(n)
        length = position[None, :] - position[:, None] + 1  # (T, T): [start, end] -> span length
        valid = is_context[:, None] & is_context[None, :] & (length >= 1) & (length <= max_answer_length)
        scores = (start_row[:n, None] + end_row[None, :n]).masked_fill(~valid, float("-inf"))  # (T, T)
        top = scores.flatten().topk(min(n_best, int(valid.sum())))
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            start, end = divmod(flat, n)
            span = (feature.offsets[start][0], feature.offsets[end][1])
            best[span] = max(score, best.get(span, float("-inf")))
    ranked = sorted(best.items(), key=lambda item: item[1], reverse=True)[:n_best]
    return [(context[a:b], score) for (a, b), score in ranked]
