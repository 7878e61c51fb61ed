"""GenerationConfig (what to generate) and the one up-front check of a prompt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from plmkit.errors import ConfigError, ShapeError, did_you_mean
from plmkit.generation.weights import DecodeDtype

ABSOLUTE_POSITIONS = ("learned", "sinusoidal", "rotary")  # position kinds bounded by max_positions
LogprobsOf = Literal["model", "processed"]


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
    # generate_ids(..., return_logprobs=True) only:
    # "model": log-softmax of the model's raw logits (temperature 1, no penalty, no top-k/top-p): what a
    #   plain forward pass gives, e.g. the reference / old-policy log-probs of PPO or GRPO at temperature 1;
    # "processed": of the scores the token was chosen from (repetition penalty; when sampling also
    #   temperature, top-k, top-p): the sampling distribution itself
    logprobs_of: LogprobsOf = "model"
    top_logprobs: int = 0  # also return the k most likely tokens per step and their log-probs (0: none)
    # the weights of the decode steps (generation/weights.py): "fp32" the model's own (unconverted),
    # "bf16" bf16 copies, "int8" weight-only int8 copies (bf16 activations). The prompt's forward
    # (prefill) always runs the model as it is; a model whose steps go through its own forward (prompt
    # or prefix tuning) decodes in its own dtype whatever this says.
    dtype: DecodeDtype = "fp32"

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
            fail(
                f"beam sampling not supported (num_beams={self.num_beams} with do_sample=True); "
                "use num_beams=1 to sample or do_sample=False for beam search"
            )
        if self.do_sample and self.temperature <= 0:
            fail(
                f"temperature must be > 0 when sampling, got {self.temperature}; "
                "use do_sample=False for greedy decoding"
            )
        if self.top_k < 0:
            fail(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            fail(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}")
        eos = self.eos_token_id
        for token in [] if eos is None else [eos] if isinstance(eos, int) else eos:
            if token < 0:
                fail(f"eos_token_id must be >= 0, got {token}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            fail(f"stop strings must be non-empty strings, got {self.stop!r}")
        choices = get_args(LogprobsOf)
        if self.logprobs_of not in choices:
            fail(
                f"logprobs_of must be one of {', '.join(choices)}, got {self.logprobs_of!r}"
                f"{did_you_mean(str(self.logprobs_of), choices)}"
            )
        dtypes = get_args(DecodeDtype)
        if self.dtype not in dtypes:
            fail(
                f"dtype must be one of {', '.join(dtypes)}, got {self.dtype!r}"
                f"{did_you_mean(str(self.dtype), dtypes)}"
            )
        if self.top_logprobs < 0:
            fail(f"top_logprobs must be >= 0 (0: none), got {self.top_logprobs}")

    def replace(self, **overrides) -> GenerationConfig:
        names = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in names:
                raise ConfigError(f"unknown generation option {key!r}{did_you_mean(key, names)}")
        return dataclasses.replace(self, **overrides)


def resolve(
    model: nn.Module, config: GenerationConfig | None, overrides: dict, tokenizer=None
) -> GenerationConfig:
    """Apply overrides and fill eos/pad from the model (then tokenizer): eos_token_id becomes a list."""
    config = (config or GenerationConfig()).replace(**overrides)
    eos = config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    candidates = (
        config.pad_token_id,
        tokenizer.pad_id if tokenizer is not None else None,
        model.config.pad_token_id,
        eos[0] if eos else None,
        0,
    )
    pad = next(c for c in candidates if c is not None)
    return dataclasses.replace(config, eos_token_id=eos, pad_token_id=pad)


def check_prompt(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: GenerationConfig
) -> None:
    """One check of the prompt before the loop (the decoder skips the model's per-call checks)."""
    family = model.config.family
    if family not in ("causal", "prefix", "seq2seq"):
        raise ConfigError(
            f"cannot generate with a {family!r} model; generation needs a causal, prefix or "
            "seq2seq language model"
        )
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ShapeError(
            f"input_ids must be a non-empty 2D (batch, seq) tensor, got shape {tuple(input_ids.shape)}"
        )
    vocab = model.config.vocab_size
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ShapeError(
            f"input_ids contains token id {high if high >= vocab else low} outside the model's "
            f"vocabulary [0, {vocab}); the tokenizer and model.vocab_size={vocab} disagree"
        )
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ShapeError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                f"{tuple(input_ids.shape)}"
            )
        if family != "seq2seq" and not bool(attention_mask[:, -1].all()):
            raise ShapeError(
                "decoder-only generation needs LEFT padding (attention_mask[:, -1] must be 1 in "
                "every row); pad with tokenizer.pad_batch(..., padding_side='left')"
            )
    if model.config.position not in ABSOLUTE_POSITIONS:
        return
    limit, n_new = model.config.max_positions, config.max_new_tokens
    if family == "seq2seq":
        if input_ids.shape[1] > limit:
            raise ShapeError(
                f"prompt of {input_ids.shape[1]} tokens exceeds model.max_positions={limit}; "
                "shorten the prompt"
            )
        length, what = 1 + n_new, f"decoder start token + max_new_tokens={n_new}"
    else:
        t = input_ids.shape[1]
        length, what = t + n_new, f"prompt of {t} tokens + max_new_tokens={n_new}"
    if length > limit:
        raise ShapeError(
            f"{what} = {length} tokens exceeds model.max_positions={limit}; "
            "shorten the prompt or lower max_new_tokens"
        )
