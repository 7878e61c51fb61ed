"""Scoring given continuations: log p(continuation | prompt), token by token, for the three families that
generate (causal, prefix, encoder-decoder). What PET's verbalizers, in-context learning's label words and
any "which answer is likelier" evaluation need. Like generation it never changes the model: no train /
eval switch, dropout off for this thread only.

    continuation_logprobs(model, [prompt_ids], [continuation_ids])  -> [[log p(c_1 | p), log p(c_2 | p c_1), ...]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plmkit.errors import ShapeError
from plmkit.model.dropout import dropout_off


@torch.no_grad()
def continuation_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> list[list[float]]:
    """Per-token log-probs of each continuation after its prompt (fp32, natural log).

    causal: one forward over prompt + continuation; the logits at position i predict token i + 1.
    prefix (UniLM / GLM): the same, with the prompt as the bidirectional prefix.
    seq2seq: the prompt is the encoder input; the continuation is the decoder's labels (teacher forced
    from the model's decoder start token)."""
    if len(prompts) != len(continuations):
        raise ShapeError(f"{len(prompts)} prompts but {len(continuations)} continuations; give one each")
    for i, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        if not c:
            raise ShapeError(f"continuation {i} is empty; there is nothing to score")
        if not p and getattr(model.config, "family", "causal") != "seq2seq":
            raise ShapeError(f"prompt {i} is empty: a decoder needs at least one token to predict from")
    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -(len(prompts[i]) + len(continuations[i])))
    with dropout_off():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            scores = _score_batch(model, [prompts[i] for i in rows], [continuations[i] for i in rows], device)
            for i, s in zip(rows, scores, strict=True):
                out[i] = s
    return out


def _padded(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids right-padded with 0 and their attention mask."""
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long, device=device)
        mask[b, : len(r)] = 1
    return ids, mask


def _score_batch(
    model: nn.Module, prompts: list[Sequence[int]], continuations: list[Sequence[int]], device: torch.device
) -> list[list[float]]:
    family = getattr(model.config, "family", "causal")
    if family == "masked":
        raise ShapeError(
            "a masked LM does not score continuations left to right; score [MASK] positions instead "
            "(plmkit.prompting's PET scoring does)"
        )
    if family == "seq2seq":
        input_ids, attention_mask = _padded([p or [model.config.eos_token_id or 0] for p in prompts], device)
        labels, label_mask = _padded(continuations, device)
        labels = labels.masked_fill(label_mask == 0, -100)
        logits = model(input_ids, attention_mask, labels=labels, compute_logits=True).logits  # (B, T, V)
        logprobs = logits.float().log_softmax(-1)
        return [
            logprobs[b, torch.arange(len(c)), torch.as_tensor(list(c), device=device)].tolist()
            for b, c in enumerate(continuations)
        ]
    joined = [list(p) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    input_ids, attention_mask = _padded(joined, device)
    kwargs = {}
    if family == "prefix":
        kwargs["prefix_lengths"] = torch.tensor([len(p) for p in prompts], device=device)
    logits = model(input_ids, attention_mask, **kwargs).logits  # (B, T, V)
    logprobs = logits.float().log_softmax(-1)
    out = []
    for b, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)  # each predicts the next
        out.append(logprobs[b, positions, torch.as_tensor(list(c), device=device)].tolist())
    return out
