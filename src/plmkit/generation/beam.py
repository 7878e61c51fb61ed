"""Beam search: B prompts at once, K beams each (B*K rows of one decoder)."""

from __future__ import annotations

import time

import torch
from torch import nn

from plmkit.generation.config import GenerationConfig
from plmkit.generation.decoder import Decoder, Timings, sync_device
from plmkit.generation.sampling import penalize, prompt_seen


@torch.inference_mode()
def beam_search(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    timings: Timings | None = None,
) -> torch.Tensor:
    """Beam search over B prompts at once (B*K rows); returns the best hypothesis per prompt (B, N).

    Hypotheses are ranked by sum(log p) / n_new_tokens**length_penalty (EOS counts as a token).
    A prompt is done when it has K finished hypotheses and none is worse than the best running beam."""
    k, n_max, pad = config.num_beams, config.max_new_tokens, config.pad_token_id
    lp = config.length_penalty
    device = input_ids.device
    decoder = Decoder(model, input_ids, attention_mask, n_max, config.dtype, rows=input_ids.shape[0] * k)
    seen = prompt_seen(model, input_ids, attention_mask, config)
    eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
    logits = decoder.prefill()  # each prompt runs once; its cache is then copied to its K beams
    started = time.perf_counter()
    b, vocab = logits.shape
    expand = torch.arange(b, device=device).repeat_interleave(k)
    decoder.reorder(expand)
    logits = logits.index_select(0, expand)
    seen = seen.index_select(0, expand) if seen is not None else None

    # all beams start identical: only beam 0 may propose at the first step
    beam_scores = torch.zeros(b, k, device=device)
    beam_scores[:, 1:] = float("-inf")
    seqs = torch.empty(b * k, 0, dtype=torch.long, device=device)  # running beams' new tokens
    done_scores = torch.full((b, k), float("-inf"), device=device)  # finished, best first
    done_seqs = torch.full((b, k, n_max), pad, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_cand = k * (1 + max(1, len(config.eos_token_id)))  # enough for k non-EOS candidates
    base = torch.arange(b, device=device)[:, None] * k  # first row of each prompt's beams
    rank = torch.arange(n_cand, device=device)

    def merge(scores, seqs, new_scores, new_seqs):
        """The K best of the finished hypotheses (scores (B, K), seqs (B, K, N)) and the new ones."""
        best_scores, best = torch.cat((scores, new_scores), dim=1).topk(k, dim=1)
        all_seqs = torch.cat((seqs, new_seqs), dim=1)
        return best_scores, all_seqs.gather(1, best[..., None].expand(-1, -1, n_max))

    for step in range(n_max):
        length = step + 1
        logprobs = penalize(logits, seen, config.repetition_penalty).log_softmax(dim=-1)  # (B*K, V)
        cand = (beam_scores.view(-1, 1) + logprobs).view(b, k * vocab)
        top_scores, top = cand.topk(min(n_cand, k * vocab), dim=1)  # (B, C) best first
        beam, tokens = top // vocab, top % vocab
        rows = base + beam  # (B, C) row of the beam each candidate extends
        is_eos = torch.isin(tokens, eos)

        # EOS among the K best candidates finishes a hypothesis (unless the prompt is done)
        finish = is_eos & (rank[: top.shape[1]] < k) & ~done[:, None]
        new_seqs = torch.cat((seqs[rows], tokens[..., None]), dim=2)
        new_seqs = torch.nn.functional.pad(new_seqs, (0, n_max - length), value=pad)
        new_scores = torch.where(finish, top_scores / length**lp, float("-inf"))
        done_scores, done_seqs = merge(done_scores, done_seqs, new_scores, new_seqs)

        # the K best non-EOS candidates continue
        beam_scores, keep = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        keep_rows = rows.gather(1, keep).view(-1)
        next_tokens = tokens.gather(1, keep).view(-1)
        seqs = torch.cat((seqs[keep_rows], next_tokens[:, None]), dim=1)
        worst_done = done_scores[:, -1]
        done = done | (torch.isfinite(worst_done) & (worst_done >= beam_scores[:, 0] / length**lp))
        if step == n_max - 1 or bool(done.all()):
            break
        if seen is not None:
            seen = seen.index_select(0, keep_rows)
            seen[torch.arange(len(next_tokens), device=device), next_tokens] = True
        decoder.reorder(keep_rows)
        logits = decoder.step(next_tokens)

    # prompts still running at the end: their live beams compete with the finished hypotheses
    live_scores = torch.where(done[:, None], float("-inf"), beam_scores / length**lp)
    live_seqs = torch.nn.functional.pad(seqs, (0, n_max - length), value=pad).view(b, k, n_max)
    _, done_seqs = merge(done_scores, done_seqs, live_scores, live_seqs)
    best = done_seqs[:, 0, :length]
    if timings is not None:
        sync_device(device)
        timings.record(decoder, time.perf_counter() - started)
    # trim columns that are padding in every row (a hypothesis may end before the loop did)
    has_eos = torch.isin(best, eos)
    lengths = torch.where(has_eos.any(dim=1), has_eos.long().argmax(dim=1) + 1, length)
    return best[:, : int(lengths.max())]
