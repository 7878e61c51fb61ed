"""Rollouts for RL fine-tuning (PPO, GRPO): sampled completions of prompts as one padded batch, and the
per-token log-probs of their response tokens under any causal LM.

    rollouts = sample_rollouts(policy, prompts, config, n=4, seed=0)    # prompts: token-id lists
    rollouts.input_ids, .attention_mask, .response_mask                 # (B, T), B = len(prompts) * n
    rollouts.ended_with_eos                                             # (B,) for a missing-EOS penalty
    logprobs = response_logprobs(model, rollouts.batch())               # (B, T), 0 off the responses

Sampling goes through plmkit.generation (KV cache, LEFT-padded prompts, never mutates the model). The
batch it returns is RIGHT padded instead: row b is its prompt then its response then padding, so every
token sits at its natural position (0, 1, ...) and any model scores it without position ids: the
reference, the reward model (its score read at the last real token), the critic. Row b holds a sample
of prompt b // n (the n samples of a prompt are adjacent: GRPO's groups).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError, DataError
from plmkit.generation import GenerationConfig, generate_ids
from plmkit.generation.config import ABSOLUTE_POSITIONS, resolve
from plmkit.model.dropout import dropout_off


@dataclass
class Rollouts:
    """Sampled completions, one row each, right padded (prompt, response, padding)."""

    input_ids: torch.Tensor  # (B, T) long: prompt + response, then pad ids
    attention_mask: torch.Tensor  # (B, T) long: 1 on the prompt and the response
    response_mask: torch.Tensor  # (B, T) bool: the generated tokens, up to and including EOS
    ended_with_eos: torch.Tensor  # (B,) bool: the response ended with EOS (not cut at max_new_tokens)
    prompt_lengths: torch.Tensor  # (B,) long: tokens before the response
    prompt_index: torch.Tensor  # (B,) long: which prompt the row samples (row // n)
    sample_logprobs: torch.Tensor  # (B, T) fp32: log p(token) under the sampling model's raw logits
    # (temperature 1; 0.0 off the response), taken during sampling: equal to response_logprobs(policy)
    rollout_seconds: float = 0.0  # wall time of the sampling

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: generated tokens per row, EOS included."""
        return self.response_mask.sum(dim=1)

    def responses(self, include_eos: bool = False) -> list[list[int]]:
        """The generated token ids of each row (without its EOS unless `include_eos`)."""
        out = []
        for b in range(self.input_ids.shape[0]):
            ids = self.input_ids[b][self.response_mask[b]].tolist()
            if self.ended_with_eos[b] and not include_eos:
                ids = ids[:-1]
            out.append(ids)
        return out

    def batch(self) -> dict[str, torch.Tensor]:
        """The tensors a loss function reads, as a batch dict."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "response_mask": self.response_mask,
        }


def check_prompts(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    """Every prompt is non-empty and, with max_new_tokens, fits the model's positions (DataError naming
    the first that does not)."""
    if not prompts:
        raise DataError("no prompts to sample from")
    config = model.config
    if config.family != "causal":
        raise ConfigError(f"rollouts need a causal LM, got a {config.family!r} model")
    limit = config.max_positions if config.position in ABSOLUTE_POSITIONS else None
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise DataError(f"prompt {i} is empty: a causal LM needs at least one token to continue")
        if limit is not None and len(prompt) + max_new_tokens > limit:
            raise DataError(
                f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(prompt) + max_new_tokens} > the model's max_positions={limit}; shorten the prompt "
                "or lower max_new_tokens"
            )


def sample_rollouts(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    n: int = 1,
    seed: int | None = None,
    batch_size: int | None = None,
) -> Rollouts:
    """`n` completions of every prompt, sampled with `config` (do_sample, temperature, top_p, top_k,
    max_new_tokens; a row stops at EOS), as one right-padded batch of len(prompts) * n rows.

    `seed` makes the samples reproducible without touching the global RNG; `batch_size` caps the rows
    decoded at once (None: all)."""
    if n < 1:
        raise ConfigError(f"n (samples per prompt) must be >= 1, got {n}")
    check_prompts(model, prompts, config.max_new_tokens)
    config = resolve(model, config, {})
    device = next(model.parameters()).device
    rows = [list(p) for p in prompts for _ in range(n)]
    size = batch_size or len(rows)
    started = time.perf_counter()
    chunks = []
    for k, start in enumerate(range(0, len(rows), size)):
        chunk_seed = None if seed is None else seed + k
        chunks.append(
            _sample_chunk(model, rows[start : start + size], config.replace(seed=chunk_seed), device)
        )
    eos = torch.tensor(config.eos_token_id, dtype=torch.long)
    responses, logprobs = [], []
    for out in chunks:
        for b in range(out.ids.shape[0]):
            keep = out.mask[b]
            responses.append(out.ids[b][keep].cpu())
            logprobs.append(out.logprobs[b][keep].cpu())
    ended = torch.tensor([bool(len(r)) and bool(torch.isin(r[-1], eos)) for r in responses])
    rollouts = _right_padded(rows, responses, logprobs, ended, config.pad_token_id, device)
    rollouts.prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(n)
    rollouts.rollout_seconds = time.perf_counter() - started
    return rollouts


def _sample_chunk(model: nn.Module, rows: list[list[int]], config: GenerationConfig, device: torch.device):
    """generate_ids on one left-padded chunk of prompts, with the sampled tokens' raw log-probs."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, longest - len(r) :] = torch.tensor(r)
        mask[b, longest - len(r) :] = 1
    return generate_ids(
        model, ids.to(device), mask.to(device), config, return_logprobs=True, logprobs_of="model"
    )


def _right_padded(
    prompts: list[list[int]],
    responses: list[torch.Tensor],
    logprobs: list[torch.Tensor],
    ended: torch.Tensor,
    pad_id: int,
    device: torch.device,
) -> Rollouts:
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    b, t = len(prompts), max(lengths)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(b, t, dtype=torch.long)
    response_mask = torch.zeros(b, t, dtype=torch.bool)
    sample_logprobs = torch.zeros(b, t)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs, strict=True)):
        input_ids[i, : len(p)] = torch.tensor(p)
        input_ids[i, len(p) : lengths[i]] = r
        attention_mask[i, : lengths[i]] = 1
        response_mask[i, len(p) : lengths[i]] = True
        sample_logprobs[i, len(p) : lengths[i]] = lp
    return Rollouts(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        response_mask=response_mask.to(device),
        ended_with_eos=ended.to(device),
        prompt_lengths=torch.tensor([len(p) for p in prompts], device=device),
        prompt_index=torch.zeros(b, dtype=torch.long, device=device),
        sample_logprobs=sample_logprobs.to(device),
    )


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) fp32: log p(input_ids[:, t] | tokens before t) from causal logits (B, T, V); column 0,
    which nothing predicts, is 0.0. Aligned with the response mask."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V): position t predicts t+1
    picked = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return F.pad(picked, (1, 0))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T) fp32: the entropy of the distribution that predicts token t (column 0: 0.0)."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return F.pad(-(logprobs.exp() * logprobs).sum(-1), (1, 0))


def response_logprobs(
    model: nn.Module, batch: dict[str, torch.Tensor], with_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T) of the response tokens under `model` (one forward; 0.0 off the
    response mask), and with `with_entropy` the entropy per token too (a statistic: no gradient).
    Differentiable: frozen_logprobs scores with a frozen model."""
    logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, T, V)
    mask = batch["response_mask"]
    logprobs = token_logprobs(logits, batch["input_ids"]) * mask
    if not with_entropy:
        return logprobs
    with torch.no_grad():
        entropy = token_entropy(logits.detach()) * mask
    return logprobs, entropy


@torch.no_grad()
def frozen_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """response_logprobs without gradients or dropout (a reference or old-policy model; the model's
    train / eval flag stays as it is)."""
    with dropout_off():
        return response_logprobs(model, batch)
