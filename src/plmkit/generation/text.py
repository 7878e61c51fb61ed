"""Text in, text out: generate (a prompt or a batch) and stream (one prompt, piece by piece).

    generate(model, tokenizer, "Once upon a time")        -> the new text (greedy)
    generate(..., return_finish=True)                     -> (the new text, Finish: why it stopped)
    stream(model, tokenizer, prompt, do_sample=True)      -> the new text, piece by piece (.finish at the end)
    stream(model, tokenizer, [ids...])                    -> the same from token ids (a rendered chat prompt)

Every family that predicts tokens works: CausalLM and PrefixLM continue the prompt (a PrefixLM reads
it bidirectionally as its prefix), Seq2SeqLM encodes it once and decodes from decoder_start_id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from plmkit.errors import ConfigError, ShapeError
from plmkit.generation.beam import beam_search
from plmkit.generation.config import GenerationConfig, check_prompt, resolve
from plmkit.generation.sampling import sample_steps


def _encode_prompts(model: nn.Module, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
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
                raise ShapeError(
                    f"prompt {i} is empty and the tokenizer has no bos or eos token to start "
                    "from; give a non-empty prompt"
                )
            batch[i] = [tokenizer.eos_id]
    input_ids, attention_mask = tokenizer.pad_batch(batch, padding_side=side)
    return input_ids.to(model.device), attention_mask.to(model.device)


@dataclass(frozen=True)
class Finish:
    """Why a text ended: the model's end-of-text token, a stop string, or max_new_tokens. `tokens`: the
    new tokens before that point (the end-of-text token not counted)."""

    reason: Literal["end_of_text", "stop_string", "max_new_tokens"]
    tokens: int

    def __str__(self) -> str:
        if self.reason == "end_of_text":
            return f"[stopped at end-of-text after {self.tokens} tokens]"
        if self.reason == "stop_string":
            return f"[stopped at a stop string after {self.tokens} tokens]"
        return f"[stopped at max_new_tokens={self.tokens}]"


def _finish(ids: list[int], eos: set[int], text: str, stops: tuple[str, ...], limit: int) -> Finish:
    """Why a row of new tokens ended (`ids` as generated, eos included when the model chose it)."""
    ends = [i for i, token in enumerate(ids) if token in eos]
    if _find_stop(text, stops) is not None:
        return Finish("stop_string", ends[0] if ends else len(ids))
    if ends:
        return Finish("end_of_text", ends[0])
    if len(ids) < limit:  # a stop-string row: eos ends it without being recorded
        return Finish("end_of_text", len(ids))
    return Finish("max_new_tokens", limit)


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


def generate(
    model: nn.Module,
    tokenizer,
    prompt: str | list[str],
    config: GenerationConfig | None = None,
    *,
    return_finish: bool = False,
    **overrides,
) -> Any:
    """The text generated after `prompt` (a list of prompts -> a list of texts), without the prompt,
    EOS, or anything from the first stop string on. With `return_finish`: (text(s), Finish(es)), why each
    text ended (end-of-text, a stop string or max_new_tokens)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        return ([], []) if return_finish else []
    config = resolve(model, config, overrides, tokenizer)
    input_ids, attention_mask = _encode_prompts(model, tokenizer, prompts)
    check_prompt(model, input_ids, attention_mask, config)
    eos = set(config.eos_token_id)
    if config.num_beams > 1:  # stop strings only cut the text here: beams are compared whole
        rows = beam_search(model, input_ids, attention_mask, config).tolist()
    elif config.stop:
        stop = _StopStrings(tokenizer, config, len(prompts))
        for _ in sample_steps(model, input_ids, attention_mask, config, stop):
            pass
        rows = stop.ids
    else:
        steps = sample_steps(model, input_ids, attention_mask, config)
        rows = torch.stack([step.tokens for step in steps], dim=1).tolist()
    texts, finishes = [], []
    for ids in rows:
        ends = [i for i, token in enumerate(ids) if token in eos]
        text = tokenizer.decode(ids[: ends[0]] if ends else ids)
        cut = _find_stop(text, config.stop)
        texts.append(text if cut is None else text[:cut])
        finishes.append(_finish(ids, eos, text, config.stop, config.max_new_tokens))
    if isinstance(prompt, str):
        texts, finishes = texts[0], finishes[0]
    return (texts, finishes) if return_finish else texts


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of text could still become the start of a stop string."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


class TextStream:
    """The pieces of one streamed text; once they are all read, `finish` says why it ended (None before)."""

    def __init__(self, pieces: Callable[[Callable[[Finish], None]], Iterator[str]]) -> None:
        self.finish: Finish | None = None
        self._pieces = pieces(self._record)

    def _record(self, finish: Finish) -> None:
        self.finish = finish

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()


def stream(
    model: nn.Module,
    tokenizer,
    prompt: str | list[int],
    config: GenerationConfig | None = None,
    **overrides,
) -> TextStream:
    """Yield the new text in pieces as tokens are generated (greedy or sampling). The pieces join to
    exactly what `generate` returns: text is held back while it ends in an incomplete character
    (U+FFFD from a byte-level token that splits a character) or could be the start of a stop string.
    After the last piece, the stream's `finish` says why the text ended. `prompt` is one text (encoded
    as `generate` encodes it) or a list of token ids taken as they are, e.g. a conversation rendered by
    its chat template (plmkit.prompting.chat.chat_prompt_ids), which writes its own special tokens."""
    ids = isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(i, int) for i in prompt)
    if not (isinstance(prompt, str) or ids):
        raise ConfigError(
            "stream takes one prompt: a string or a non-empty list of token ids; use generate() for a batch"
        )
    config = resolve(model, config, overrides, tokenizer)
    if config.num_beams > 1:
        raise ConfigError(
            f"stream supports greedy decoding and sampling only, not beam search "
            f"(num_beams={config.num_beams}): beams are only known at the end; use generate()"
        )
    if isinstance(prompt, str):
        input_ids, attention_mask = _encode_prompts(model, tokenizer, [prompt])
    else:
        input_ids = torch.tensor([list(prompt)], device=model.device)  # (1, T)
        attention_mask = torch.ones_like(input_ids)
    check_prompt(model, input_ids, attention_mask, config)
    return TextStream(
        lambda record: _stream_pieces(model, tokenizer, input_ids, attention_mask, config, record)
    )


def _stream_pieces(
    model, tokenizer, input_ids, attention_mask, config, record: Callable[[Finish], None]
) -> Iterator[str]:
    eos, stops = set(config.eos_token_id), config.stop
    ids: list[int] = []
    emitted = text = ""
    finish = Finish("max_new_tokens", config.max_new_tokens)
    steps = sample_steps(model, input_ids, attention_mask, config)
    try:
        for step in steps:
            token = int(step.tokens[0])
            if token in eos:
                finish = Finish("end_of_text", len(ids))
                break
            ids.append(token)
            text = tokenizer.decode(ids)
            cut = _find_stop(text, stops)
            if cut is not None:
                text = text[:cut]
                finish = Finish("stop_string", len(ids))
                break
            stable = text.rstrip("\ufffd")  # an incomplete multi-byte character may still change
            stable = stable[: len(stable) - _held_back(stable, stops)]
            if len(stable) > len(emitted):
                yield stable[len(emitted) :]
                emitted = stable
    finally:
        steps.close()  # frees the decoder (and its cache) at once when the reader stops early
    if len(text) > len(emitted):
        yield text[len(emitted) :]
    record(finish)
