"""generate_ids: new token ids (and, on request, their log-probs) for a batch of prompt ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.generation.beam import beam_search
from plmkit.generation.config import GenerationConfig, check_prompt, resolve
from plmkit.generation.decoder import Timings
from plmkit.generation.sampling import sample_steps


@dataclass
class GenerationOutput:
    """What generate_ids(..., return_logprobs=True or return_output=True) returns; all (B, N[, k]) with
    N new tokens.

    logprobs are under the distribution `config.logprobs_of` names ("model": the raw logits at
    temperature 1, what a forward pass of the same model gives; "processed": the scores the token was
    chosen from, after the repetition penalty, temperature, top-k and top-p)."""

    ids: torch.Tensor  # (B, N) long: new tokens; a row that finished continues with the pad id
    logprobs: torch.Tensor | None  # (B, N) fp32 log p(token), 0.0 where mask is False; None unless asked
    mask: torch.Tensor  # (B, N) bool: tokens the row generated (its EOS included), not the padding after
    top_ids: torch.Tensor | None = None  # (B, N, k) with config.top_logprobs=k: the k likeliest tokens
    top_logprobs: torch.Tensor | None = None  # (B, N, k) their log-probs, best first
    # timings (seconds): the prompt's forward; every step after it; the one-off weight preparation
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prepare_seconds: float = 0.0
    decode_steps: int = 0  # steps timed by decode_seconds (the prefill gives the first new token)


def generate_ids(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    return_logprobs: bool = False,
    return_output: bool = False,
    **overrides,
) -> torch.Tensor | GenerationOutput:
    """New token ids (B, N) for a batch of prompts (decoder-only: left padded). N <= max_new_tokens:
    generation stops early once every row has produced EOS; finished rows continue with pad ids.
    With return_logprobs=True: a GenerationOutput (ids, per-token log-probs, mask[, top-k], timings).
    With return_output=True: a GenerationOutput without log-probs (ids, mask, timings)."""
    config = resolve(model, config, overrides)
    check_prompt(model, input_ids, attention_mask, config)
    if config.top_logprobs and not return_logprobs:
        raise ConfigError(f"generation: top_logprobs={config.top_logprobs} needs return_logprobs=True")
    timings = Timings()
    if config.num_beams > 1:
        if return_logprobs:
            raise ConfigError(
                f"generation: return_logprobs supports greedy decoding and sampling, not beam "
                f"search (num_beams={config.num_beams}); use num_beams=1"
            )
        ids = beam_search(model, input_ids, attention_mask, config, timings).clone()
        if not return_output:
            return ids
        eos = torch.isin(ids, torch.tensor(config.eos_token_id, dtype=torch.long, device=ids.device))
        mask = (eos.long().cumsum(dim=1) - eos.long()) == 0  # up to and with the first EOS
        return _output(ids, None, mask, None, None, timings)
    steps = list(
        sample_steps(model, input_ids, attention_mask, config, with_logprobs=return_logprobs, timings=timings)
    )
    active = torch.stack([s.active for s in steps], dim=1)
    # drop the steps after every row had finished (the check may come a few steps late)
    steps = steps[: int(active.any(dim=0).nonzero().max()) + 1]
    active = active[:, : len(steps)]
    # clone: a normal tensor (not an inference tensor), usable in autograd, e.g. RLHF
    ids = torch.stack([s.tokens for s in steps], dim=1).clone()
    if not (return_logprobs or return_output):
        return ids

    def stacked(name: str) -> torch.Tensor | None:
        values = [getattr(s, name) for s in steps]
        return None if values[0] is None else torch.stack(values, dim=1).clone()

    return _output(
        ids, stacked("logprobs"), active.clone(), stacked("top_ids"), stacked("top_logprobs"), timings
    )


def _output(ids, logprobs, mask, top_ids, top_logprobs, timings: Timings) -> GenerationOutput:
    return GenerationOutput(
        ids,
        logprobs,
        mask,
        top_ids,
        top_logprobs,
        prefill_seconds=timings.prefill_seconds,
        decode_seconds=timings.decode_seconds,
        prepare_seconds=timings.prepare_seconds,
        decode_steps=timings.steps,
    )
