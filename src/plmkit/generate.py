"""Text generation: greedy, sampling (temperature, top-k, top-p), beam search, streaming, KV cache.

    generate(model, tokenizer, "Once upon a time")        -> the new text (greedy)
    stream(model, tokenizer, prompt, do_sample=True)      -> the new text, piece by piece
    generate_ids(model, input_ids, attention_mask)        -> the new token ids (B, N)

Every family that predicts tokens works: CausalLM and PrefixLM continue the prompt (a PrefixLM reads
it bidirectionally as its prefix), Seq2SeqLM encodes it once and decodes from decoder_start_id.
The prompt runs through the model once ("prefill"); after that each step feeds one token per row and
reuses the cached keys/values. Batched decoder-only prompts are LEFT padded so that every row's next
token sits in the last column; positions count real tokens only (cumsum(mask) - 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from plmkit.errors import ConfigError, ShapeError, did_you_mean
from plmkit.model.transformer import PretrainedModel, reorder_cache

ABSOLUTE_POSITIONS = ("learned", "sinusoidal", "rotary")  # position kinds bounded by max_positions


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False  # False: greedy (num_beams=1) or beam search
    temperature: float = 1.0  # sampling only: logits / temperature
    top_k: int = 0  # sampling only: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # sampling only: keep the smallest set with probability >= top_p
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search ranks hypotheses by sum(log p) / length**length_penalty
    repetition_penalty: float = 1.0  # CTRL: logits of tokens already seen are divided (>0) or multiplied (<0)
    eos_token_id: int | list[int] | None = None  # None: model.config.eos_token_id, else tokenizer.eos_id
    pad_token_id: int | None = None  # fills rows that have finished; None: tokenizer/model pad, else eos
    stop: tuple[str, ...] = ()  # a row ends once its new text contains one; the text is cut before it
    seed: int | None = None  # sampling with a private torch.Generator (the global RNG is untouched)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if isinstance(self.eos_token_id, (list, tuple)):
            self.eos_token_id = [int(i) for i in self.eos_token_id]
        self.validate()

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(f"generation: {message}")

        if self.max_new_tokens < 1:
            fail(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            fail(f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams > 1 and self.do_sample:
            fail(f"beam sampling not supported (num_beams={self.num_beams} with do_sample=True); "
                 "use num_beams=1 to sample or do_sample=False for beam search")
        if self.do_sample and self.temperature <= 0:
            fail(f"temperature must be > 0 when sampling, got {self.temperature}; "
                 "use do_sample=False for greedy decoding")
        if self.top_k < 0:
            fail(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}")
        eos = self.eos_token_id
        for token in ([] if eos is None else [eos] if isinstance(eos, int) else eos):
            if token < 0:
                fail(f"eos_token_id must be >= 0, got {token}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            fail(f"stop strings must be non-empty strings, got {self.stop!r}")

    def replace(self, **overrides) -> GenerationConfig:
        names = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in names:
                raise ConfigError(f"unknown generation option {key!r}{did_you_mean(key, names)}")
        return dataclasses.replace(self, **overrides)


def _resolve(model: PretrainedModel, config: GenerationConfig | None, overrides: dict,
             tokenizer=None) -> GenerationConfig:
    """Apply overrides and fill eos/pad from the model (then tokenizer): eos_token_id becomes a list."""
    config = (config or GenerationConfig()).replace(**overrides)
    eos = config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    candidates = (config.pad_token_id, tokenizer.pad_id if tokenizer is not None else None,
                  model.config.pad_token_id, eos[0] if eos else None, 0)
    pad = next(c for c in candidates if c is not None)
    return dataclasses.replace(config, eos_token_id=eos, pad_token_id=pad)


def _check_prompt(model: PretrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  config: GenerationConfig) -> None:
    """One check of the prompt before the loop (the model's per-call checks are switched off)."""
    family = model.config.family
    if family not in ("causal", "prefix", "seq2seq"):
        raise ConfigError(f"cannot generate with a {family!r} model; generation needs a causal, prefix or "
                          "seq2seq language model")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ShapeError(f"input_ids must be a non-empty 2D (batch, seq) tensor, got shape "
                         f"{tuple(input_ids.shape)}")
    vocab = model.config.vocab_size
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ShapeError(f"input_ids contains token id {high if high >= vocab else low} outside the model's "
                         f"vocabulary [0, {vocab}); the tokenizer and model.vocab_size={vocab} disagree")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ShapeError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                             f"{tuple(input_ids.shape)}")
        if family != "seq2seq" and not bool(attention_mask[:, -1].all()):
            raise ShapeError("decoder-only generation needs LEFT padding (attention_mask[:, -1] must be 1 in "
                             "every row); pad with tokenizer.pad_batch(..., padding_side='left')")
    if model.config.position not in ABSOLUTE_POSITIONS:
        return
    limit, n_new = model.config.max_positions, config.max_new_tokens
    if family == "seq2seq":
        if input_ids.shape[1] > limit:
            raise ShapeError(f"prompt of {input_ids.shape[1]} tokens exceeds model.max_positions={limit}; "
                             "shorten the prompt")
        length, what = 1 + n_new, f"decoder start token + max_new_tokens={n_new}"
    else:
        t = input_ids.shape[1]
        length, what = t + n_new, f"prompt of {t} tokens + max_new_tokens={n_new}"
    if length > limit:
        raise ShapeError(f"{what} = {length} tokens exceeds model.max_positions={limit}; "
                         "shorten the prompt or lower max_new_tokens")


class _Decoder:
    """Runs the model for generation: `prefill()` once, then `step(tokens)` per new token, both
    returning next-token logits (B, V). Holds the KV cache and everything that grows with it
    (padding mask, next positions); `reorder(index)` selects rows for beam search."""

    def __init__(self, model: PretrainedModel, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> None:
        self.model = model
        self.family = model.config.family
        self.input_ids = input_ids
        # an all-ones mask carries no information; without one the model takes its fast causal path
        self.mask = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
        self.past = None
        self.positions: torch.Tensor | None = None  # (B,) position of the next token (padded decoder-only)
        self.memory: torch.Tensor | None = None  # seq2seq encoder output (B, S, C)

    def _call(self, fn, **kwargs):
        # the prompt was checked once up front; per-step checks would cost a device sync each
        saved, self.model.check_inputs = self.model.check_inputs, False
        try:
            return fn(**kwargs)
        finally:
            self.model.check_inputs = saved

    def prefill(self) -> torch.Tensor:
        model, ids = self.model, self.input_ids
        if self.family == "seq2seq":
            self.memory = self._call(model.encode, input_ids=ids, attention_mask=self.mask)
            start = torch.full((ids.shape[0], 1), model.config.decoder_start_id, dtype=torch.long,
                               device=ids.device)
            return self._decode(start)
        kwargs = {}
        if self.family == "prefix":  # the whole (padded) prompt is the bidirectional prefix
            kwargs["prefix_lengths"] = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        if self.mask is not None:
            position_ids = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs.update(attention_mask=self.mask, position_ids=position_ids)
            self.positions = position_ids[:, -1] + 1
        out = self._call(model, input_ids=ids, use_cache=True, **kwargs)
        self.past = out.past_key_values
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, V) for the token after them."""
        if self.family == "seq2seq":
            return self._decode(tokens[:, None])
        kwargs = {}
        if self.mask is not None:  # padded batch: the mask grows by one column, positions by one
            self.mask = torch.cat((self.mask, self.mask.new_ones(self.mask.shape[0], 1)), dim=1)
            kwargs.update(attention_mask=self.mask, position_ids=self.positions[:, None])
            self.positions = self.positions + 1
        out = self._call(self.model, input_ids=tokens[:, None], past_key_values=self.past, use_cache=True,
                         **kwargs)
        self.past = out.past_key_values
        return out.logits[:, -1]

    def _decode(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        out = self._call(self.model, attention_mask=self.mask, decoder_input_ids=decoder_input_ids,
                         encoder_hidden_states=self.memory, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        self.past = reorder_cache(self.past, index)
        for name in ("mask", "positions", "memory"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))


@contextlib.contextmanager
def _eval_mode(model: PretrainedModel) -> Iterator[None]:
    """Dropout off while generating; the caller's train/eval mode comes back afterwards."""
    from plmkit.model.transformer import LMHead

    was_training = model.training
    model.eval()
    with contextlib.ExitStack() as stack:
        for module in model.modules():  # the decode-friendly output layout, for this call only
            if isinstance(module, LMHead):
                stack.enter_context(module.decoding())
        try:
            yield
        finally:
            model.train(was_training)


# ---- logits processing -----------------------------------------------------------------------------
def _prompt_seen(model: PretrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 config: GenerationConfig) -> torch.Tensor | None:
    """(B, V) bool: tokens the repetition penalty applies to (None when it is off). A seq2seq prompt is
    the source text, which the output may legitimately copy, so only the decoder's own tokens count."""
    if config.repetition_penalty == 1.0:
        return None
    b, vocab = input_ids.shape[0], model.config.vocab_size
    seen = torch.zeros(b, vocab, dtype=torch.bool, device=input_ids.device)
    if model.config.family != "seq2seq":
        real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        # scatter_add, not scatter: the pad id may also occur as a real token in another column
        counts = torch.zeros(b, vocab, dtype=torch.long, device=input_ids.device)
        seen = counts.scatter_add(1, input_ids, real) > 0
    return seen


def _penalize(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """fp32 logits with the CTRL repetition penalty on already seen tokens."""
    scores = logits.float()
    if seen is None:
        return scores
    penalized = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalized, scores)


def _filter_for_sampling(scores: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus); removed tokens get -inf."""
    if config.temperature != 1.0:
        scores = scores / config.temperature
    if 0 < config.top_k < scores.shape[-1]:
        kth = scores.topk(config.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token when the more likely ones already reach top_p; the first one always stays
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


# ---- greedy and sampling ---------------------------------------------------------------------------
@torch.inference_mode()
def _sample_steps(
    model: PretrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    stop_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Greedy / sampled decoding, one step per iteration: yields (tokens (B,), active (B,) bool), where
    inactive rows had already finished and got the pad id. `stop_rows(tokens, active)` may end more
    rows (stop strings). The only per-step host sync is the "all rows finished?" check."""
    with _eval_mode(model):
        decoder = _Decoder(model, input_ids, attention_mask)
        seen = _prompt_seen(model, input_ids, attention_mask, config)
        eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=input_ids.device)
        generator = None
        if config.do_sample and config.seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)
        logits = decoder.prefill()
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for step in range(config.max_new_tokens):
            scores = _penalize(logits, seen, config.repetition_penalty)
            if config.do_sample:
                probs = _filter_for_sampling(scores, config).softmax(dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                tokens = scores.argmax(dim=-1)
            active = ~finished
            tokens = tokens.masked_fill(finished, config.pad_token_id)
            finished = finished | torch.isin(tokens, eos)
            if stop_rows is not None:
                extra = stop_rows(tokens, active)
                if extra is not None:
                    finished = finished | extra
            yield tokens, active
            if step == config.max_new_tokens - 1 or bool(finished.all()):
                return
            if seen is not None:
                seen[torch.arange(len(tokens), device=tokens.device), tokens] = True
            logits = decoder.step(tokens)


# ---- beam search -----------------------------------------------------------------------------------
@torch.inference_mode()
def _beam_search(model: PretrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 config: GenerationConfig) -> torch.Tensor:
    """Beam search over B prompts at once (B*K rows); returns the best hypothesis per prompt (B, N).

    Hypotheses are ranked by sum(log p) / n_new_tokens**length_penalty (EOS counts as a token).
    A prompt is done when it has K finished hypotheses and none is worse than the best running beam."""
    with _eval_mode(model):
        k, n_max, pad = config.num_beams, config.max_new_tokens, config.pad_token_id
        lp = config.length_penalty
        device = input_ids.device
        decoder = _Decoder(model, input_ids, attention_mask)
        seen = _prompt_seen(model, input_ids, attention_mask, config)
        eos = torch.tensor(config.eos_token_id, dtype=torch.long, device=device)
        logits = decoder.prefill()  # each prompt runs once; its cache is then copied to its K beams
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
            logprobs = _penalize(logits, seen, config.repetition_penalty).log_softmax(dim=-1)  # (B*K, V)
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
        # trim columns that are padding in every row (a hypothesis may end before the loop did)
        has_eos = torch.isin(best, eos)
        lengths = torch.where(has_eos.any(dim=1), has_eos.long().argmax(dim=1) + 1, length)
        return best[:, : int(lengths.max())]


# ---- public API ------------------------------------------------------------------------------------
def generate_ids(model: PretrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 config: GenerationConfig | None = None, **overrides) -> torch.Tensor:
    """New token ids (B, N) for a batch of prompts (decoder-only: left padded). N <= max_new_tokens:
    generation stops early once every row has produced EOS; finished rows continue with pad ids."""
    config = _resolve(model, config, overrides)
    _check_prompt(model, input_ids, attention_mask, config)
    if config.num_beams > 1:
        ids = _beam_search(model, input_ids, attention_mask, config)
    else:
        steps = _sample_steps(model, input_ids, attention_mask, config)
        ids = torch.stack([tokens for tokens, _ in steps], dim=1)
    return ids.clone()  # a normal tensor (not an inference tensor): usable in autograd, e.g. RLHF


def _encode_prompts(model: PretrainedModel, tokenizer,
                    prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids + mask on the model's device: seq2seq gets the tokenizer's template (e.g. `... eos`),
    decoder-only models get bos (when the tokenizer has one) + the text, left padded."""
    if model.config.family == "seq2seq":
        batch = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
        side = "right"
    else:
        bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        batch = [bos + tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        side = "left"
    for i, ids in enumerate(batch):
        if not ids:  # an empty prompt starts from eos (GPT-2's document separator) when there is one
            if tokenizer.eos_id is None:
                raise ShapeError(f"prompt {i} is empty and the tokenizer has no bos or eos token to start "
                                 "from; give a non-empty prompt")
            batch[i] = [tokenizer.eos_id]
    input_ids, attention_mask = tokenizer.pad_batch(batch, padding_side=side)
    return input_ids.to(model.device), attention_mask.to(model.device)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class _StopStrings:
    """Decodes each row's new tokens as they come and ends the rows whose text contains a stop string."""

    def __init__(self, tokenizer, config: GenerationConfig, batch: int) -> None:
        self.tokenizer, self.stops, self.eos = tokenizer, config.stop, set(config.eos_token_id)
        self.ids: list[list[int]] = [[] for _ in range(batch)]

    def __call__(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        stopped = []
        for row, (token, alive) in enumerate(zip(tokens.tolist(), active.tolist())):
            if alive and token not in self.eos:
                self.ids[row].append(token)
            text = self.tokenizer.decode(self.ids[row]) if alive else ""
            stopped.append(_find_stop(text, self.stops) is not None)
        return torch.tensor(stopped, device=tokens.device)


def generate(model: PretrainedModel, tokenizer, prompt: str | list[str],
             config: GenerationConfig | None = None, **overrides) -> str | list[str]:
    """The text generated after `prompt` (a list of prompts -> a list of texts), without the prompt,
    EOS, or anything from the first stop string on."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        return []
    config = _resolve(model, config, overrides, tokenizer)
    input_ids, attention_mask = _encode_prompts(model, tokenizer, prompts)
    _check_prompt(model, input_ids, attention_mask, config)
    eos = set(config.eos_token_id)
    if config.num_beams > 1:  # stop strings only cut the text here: beams are compared whole
        rows = _beam_search(model, input_ids, attention_mask, config).tolist()
    elif config.stop:
        stop = _StopStrings(tokenizer, config, len(prompts))
        for _ in _sample_steps(model, input_ids, attention_mask, config, stop):
            pass
        rows = stop.ids
    else:
        steps = _sample_steps(model, input_ids, attention_mask, config)
        rows = torch.stack([tokens for tokens, _ in steps], 1).tolist()
    texts = []
    for ids in rows:
        ends = [i for i, token in enumerate(ids) if token in eos]
        text = tokenizer.decode(ids[: ends[0]] if ends else ids)
        cut = _find_stop(text, config.stop)
        texts.append(text if cut is None else text[:cut])
    return texts[0] if isinstance(prompt, str) else texts


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of text could still become the start of a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def stream(model: PretrainedModel, tokenizer, prompt: str, config: GenerationConfig | None = None,
           **overrides) -> Iterator[str]:
    """Yield the new text in pieces as tokens are generated (greedy or sampling). The pieces join to
    exactly what `generate` returns: text is held back while it ends in an incomplete character
    (U+FFFD from a byte-level token that splits a character) or could be the start of a stop string."""
    if not isinstance(prompt, str):
        raise ConfigError("stream takes one prompt string; use generate() for a batch")
    config = _resolve(model, config, overrides, tokenizer)
    if config.num_beams > 1:
        raise ConfigError(f"stream supports greedy decoding and sampling only, not beam search "
                          f"(num_beams={config.num_beams}): beams are only known at the end; use generate()")
    input_ids, attention_mask = _encode_prompts(model, tokenizer, [prompt])
    _check_prompt(model, input_ids, attention_mask, config)
    return _stream_pieces(model, tokenizer, input_ids, attention_mask, config)


def _stream_pieces(model, tokenizer, input_ids, attention_mask, config) -> Iterator[str]:
    eos, stops = set(config.eos_token_id), config.stop
    ids: list[int] = []
    emitted = text = ""
    steps = _sample_steps(model, input_ids, attention_mask, config)
    try:
        for tokens, _ in steps:
            token = int(tokens[0])
            if token in eos:
                break
            ids.append(token)
            text = tokenizer.decode(ids)
            cut = _find_stop(text, stops)
            if cut is not None:
                text = text[:cut]
                break
            stable = text.rstrip("\ufffd")  # an incomplete multi-byte character may still change
            stable = stable[: len(stable) - _held_back(stable, stops)]
            if len(stable) > len(emitted):
                yield stable[len(emitted):]
                emitted = stable
    finally:
        steps.close()  # ends the loop (restores the model's mode) when the reader stops early
    if len(text) > len(emitted):
        yield text[len(emitted):]


class _CallableModule(types.ModuleType):
    """`plmkit.generate(model, tok, prompt)` is the documented one-liner, while `plmkit.generate` is
    also this module (`from plmkit.generate import stream`): calling the module calls `generate`."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
