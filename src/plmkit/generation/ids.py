"""generate_ids: new token ids (and, on request, their log-probs) for a batch of prompt ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.generation.beam import beam_search
from plmkit.generation.config import GenerationConfig, check_prompt, resolve
from plmkit.generation.sampling import sample_steps


@dataclass
class GenerationOutput:
    """What generate_ids(..., return_logprobs=True) returns; all (B, N[, k]) with N new tokens.

    logprobs are under the distribution `config.logprobs_of` names ("model": the raw logits at
    temperature 1, what a forward pass of the same model gives; "processed": the scores the token was
    chosen from, after the repetition penalty, temperature, top-k and top-p)."""

    ids: torch.Tensor  # (B, N) long: new tokens; a row that finished continues with the pad id
    logprobs: torch.Tensor  # (B, N) fp32 log p(token); 0.0 where mask is False
    mask: torch.Tensor  # (B, N) bool: tokens the row generated (its EOS included), not the padding after
    top_ids: torch.Tensor | None = None  # (B, N, k) with config.top_logprobs=k: the k likeliest tokens
    top_logprobs: torch.Tensor | None = None  # (B, N, k) their log-probs, best first


def generate_ids(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    return_logprobs: bool = False,
    **overrides,
) -> torch.Tensor | GenerationOutput:
    """New token ids (B, N) for a batch of prompts (decoder-only: left padded). N <= max_new_tokens:
    generation stops early once every row has produced EOS; finished rows continue with pad ids.
    With return_logprobs=True: a GenerationOutput (ids, per-token log-probs, mask[, top-k])."""
    config = resolve(model, config, overrides)
    check_prompt(model, input_ids, attention_mask, config)
    if config.top_logprobs and not return_logprobs:
        raise ConfigError(f"generation: top_logprobs={config.top_logprobs} needs return_logprobs=True")
    if config.num_beams > 1:
        if return_logprobs:
            raise ConfigError(
                f"generation: return_logprobs supports greedy decoding and sampling, not beam "
                f"search (num_beams={config.num_beams}); use num_beams=1"
            )
        return beam_search(model, input_ids, attention_mask, config).clone()
    steps = list(sample_steps(model, input_ids, attention_mask, config, with_logprobs=return_logprobs))
    # clone: a normal tensor (not an inference tensor), usable in autograd, e.g. RLHF
    ids = torch.stack([s.tokens for s in steps], dim=1).clone()
    if not return_logprobs:
        return ids

    def stacked(name: str) -> torch.Tensor | None:
        values = [getattr(s, name) for s in steps]
        return None if values[0] is None else torch.stack(values, dim=1).clone()

    return GenerationOutput(
        ids, stacked("logprobs"), stacked("active"), stacked("top_ids"), stacked("top_logprobs")
    )
