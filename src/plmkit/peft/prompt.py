"""Prompt tuning (Lester et al. 2021): n learned "virtual token" embeddings in front of every input.

`PromptTunedModel` wraps any plmkit model without changing its code. A forward call
  1. puts n placeholder ids in front of input_ids (and the matching ones / zeros / -100 in front of
     attention_mask, token_type_ids, labels; position_ids, prefix_lengths and span positions shift by n);
  2. runs the base model while a forward hook on its token embedding replaces the placeholders'
     embeddings by the soft prompt (n, C); positions, segment embeddings, scaling and norms then apply
     to the prompt as to any token;
  3. removes the n prompt positions from per-token outputs (logits, hidden states, span logits,
     values), so outputs line up with the caller's input_ids as without the prompt.
The loss covers the same label positions as the base model would (a causal LM does not learn to
predict the first real token from the prompt). Seq2seq models get the prompt in front of the encoder
input. Decoding with a KV cache works: the cache holds the prompt after the first call, later calls
only widen the attention mask and shift the positions.

The prompt starts from the embeddings of vocabulary tokens: the tokens of `init_text` (repeated to n),
or `init_ids`, or n random vocabulary tokens.
"""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from plmkit.config.fields import Range
from plmkit.errors import ConfigError, ShapeError
from plmkit.model.registry import register_model_class
from plmkit.peft.base import PeftConfig, PeftModule

IGNORE = -100
# The wrapper whose forward is running in this thread (or task): its hook swaps in the prompt only then.
# A context variable rather than a flag on the module, so concurrent calls (a server's threads, generation
# beside training) never switch each other's prompt on or off.
_RUNNING: ContextVar[PromptTunedModel | None] = ContextVar("plmkit_prompt_running", default=None)


class SoftPrompt(PeftModule):
    peft_children = ("embedding",)

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(embedding.detach().clone())  # (n, C)


def initial_ids(
    vocab: int,
    n_tokens: int,
    init_text: str | None,
    init_ids: list[int] | None,
    tokenizer: Any,
    method: str = "prompt",
) -> torch.Tensor:
    """(n,) vocabulary ids to start from: the tokens of `init_text` (repeated to n), or `init_ids`, or n
    random ones. Shared by prompt tuning (their embeddings) and P-tuning v2 (their keys/values)."""
    if init_text is not None:
        if tokenizer is None:
            raise ConfigError(
                f"{method} init_text needs the tokenizer: apply(model, '{method}', init_text=..., "
                "tokenizer=tok)"
            )
        init_ids = list(tokenizer.encode(init_text, add_special_tokens=False))
        if not init_ids:
            raise ConfigError(f"{method} init_text {init_text!r} has no tokens")
    if init_ids is None:
        return torch.randint(0, vocab, (n_tokens,))
    bad = [i for i in init_ids if not isinstance(i, int) or not 0 <= i < vocab]
    if bad or not init_ids:
        raise ConfigError(f"{method} init_ids must be token ids in [0, {vocab}), got {bad or init_ids}")
    return torch.tensor(init_ids * (n_tokens // len(init_ids) + 1))[:n_tokens]  # repeat to n tokens


def initial_prompt(
    tokens: nn.Embedding, n_tokens: int, init_text: str | None, init_ids: list[int] | None, tokenizer: Any
) -> torch.Tensor:
    """(n, C) start values: rows of the token embedding for the chosen (or random) vocabulary ids (looked
    up through the module, so an int8 embedding of a quantized base gives its dequantized rows)."""
    ids = initial_ids(tokens.num_embeddings, n_tokens, init_text, init_ids, tokenizer)
    with torch.no_grad():
        return tokens(ids.to(tokens.weight.device))


@register_model_class
class PromptTunedModel(nn.Module):
    """A plmkit model with a soft prompt; call it exactly like the base model."""

    is_peft_wrapper = True

    def __init__(self, base: nn.Module, prompt: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.prompt = SoftPrompt(prompt)
        self.n_tokens = prompt.shape[0]
        self.seq2seq = base.config.family == "seq2seq"
        stack = base.encoder if self.seq2seq else base.transformer
        self._hook = stack.embed.tokens.register_forward_hook(self._insert_prompt)
        self._signature = inspect.signature(base.forward)

    # ---- what a plmkit model offers ----------------------------------------------------------------
    @property
    def config(self):
        return self.base.config

    @property
    def device(self) -> torch.device:
        return self.prompt.embedding.device

    @property
    def shift_labels(self) -> bool:  # the trainer counts target tokens as the base model does
        return getattr(self.base, "shift_labels", False)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.base.set_gradient_checkpointing(enabled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_kwargs(self) -> dict[str, Any]:
        from plmkit.model.registry import init_kwargs

        config = getattr(self, "peft_config", None)
        return {
            "base_class": type(self.base).__name__,
            "base_kwargs": init_kwargs(self.base),
            "n_tokens": self.n_tokens,
            "train_head": bool(config and config.options.get("train_head")),
        }

    @classmethod
    def from_config(
        cls, config, base_class: str, base_kwargs: dict, n_tokens: int, train_head: bool = False
    ) -> PromptTunedModel:
        """Rebuild from a plmkit checkpoint header (plmkit.io.load; `import plmkit.peft` first)."""
        from plmkit.model.registry import model_classes
        from plmkit.peft.base import mark_only_peft_trainable

        base = model_classes()[base_class](config, **base_kwargs)
        model = cls(base, torch.zeros(n_tokens, config.d_model))
        model.peft_config = PeftConfig("prompt", {"n_tokens": n_tokens, "train_head": train_head})
        return mark_only_peft_trainable(model)

    def remove(self) -> nn.Module:
        """The base model without the prompt (the hook removed)."""
        self._hook.remove()
        return self.base

    # ---- forward -----------------------------------------------------------------------------------
    def _insert_prompt(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if _RUNNING.get() is not self:  # the base model called directly, not through this wrapper
            return None
        n = self.n_tokens
        prompt = self.prompt.embedding.to(output.dtype).expand(output.shape[0], n, -1)
        return torch.cat((prompt, output[:, n:]), dim=1)

    def _run(self, fn, **kwargs):
        token = _RUNNING.set(self)
        try:
            return fn(**kwargs)
        finally:
            _RUNNING.reset(token)

    def _prepend(self, tensor: torch.Tensor, value: int) -> torch.Tensor:
        pad = tensor.new_full((tensor.shape[0], self.n_tokens), value)
        return torch.cat((pad, tensor), dim=1)

    def _widen_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dim() != 2:
            raise ShapeError(
                f"prompt tuning needs a 2D (batch, seq) attention_mask, got shape {tuple(mask.shape)}"
            )
        return self._prepend(mask, 1)

    def _extend_inputs(self, a: dict[str, Any]) -> None:
        """Put the prompt's n positions in front of every per-token input of a fresh (uncached) call."""
        ids = a["input_ids"]
        n, t = self.n_tokens, ids.shape[1]
        a["input_ids"] = self._prepend(ids, 0)  # placeholder ids; the hook swaps in the prompt
        a["attention_mask"] = self._widen_mask(a.get("attention_mask"))
        for key in ("token_type_ids", "block_position_ids"):
            if a.get(key) is not None:
                a[key] = self._prepend(a[key], 0)
        if a.get("position_ids") is not None:
            pos = a["position_ids"]
            head = torch.arange(n, device=pos.device).expand(pos.shape[0], n)
            a["position_ids"] = torch.cat((head, pos + n), dim=1)
        for key in ("prefix_lengths", "start_positions", "end_positions"):
            if a.get(key) is not None:
                a[key] = a[key] + n
        labels = a.get("labels")
        if labels is not None and labels.dim() == 2 and labels.shape[1] == t:  # per-token labels
            labels = self._prepend(labels, IGNORE)
            if getattr(self.base, "shift_labels", False):
                labels[:, n] = IGNORE  # the base model never predicts the first token: neither do we
            a["labels"] = labels

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, check_inputs: bool = True
    ) -> torch.Tensor:
        """Seq2seq: encoder states (B, n + S, C) of the prompt followed by the input."""
        return self._run(
            self.base.encode,
            input_ids=self._prepend(input_ids, 0),
            attention_mask=self._widen_mask(attention_mask),
            check_inputs=check_inputs,
        )

    def forward(self, *args, **kwargs):
        a = dict(self._signature.bind(*args, **kwargs).arguments)
        if self.seq2seq:
            return self._forward_seq2seq(a)
        if a.get("past_key_values"):  # decoding: the cache already holds the prompt
            a["attention_mask"] = self._widen_mask(a.get("attention_mask"))
            if a.get("position_ids") is not None:
                a["position_ids"] = a["position_ids"] + self.n_tokens
            return self.base(**a)
        t = a["input_ids"].shape[1]
        self._extend_inputs(a)
        out = self._run(self.base, **a)
        for name in ("logits", "hidden_states", "start_logits", "end_logits", "values"):
            value = getattr(out, name)
            per_token = value is not None and (value.dim() == 3 or name != "logits" and value.dim() == 2)
            if per_token and value.shape[1] == self.n_tokens + t:
                setattr(out, name, value[:, self.n_tokens :])
        return out

    def _forward_seq2seq(self, a: dict[str, Any]):
        if a.get("encoder_hidden_states") is None and a.get("input_ids") is not None:
            a["encoder_hidden_states"] = self.encode(
                a["input_ids"], a.get("attention_mask"), a.get("check_inputs", True)
            )
            a["input_ids"] = None
            a["attention_mask"] = self._widen_mask(a.get("attention_mask"))
        elif a.get("attention_mask") is not None and a["encoder_hidden_states"] is not None:
            if a["attention_mask"].shape[-1] == a["encoder_hidden_states"].shape[1] - self.n_tokens:
                a["attention_mask"] = self._widen_mask(a["attention_mask"])
        return self.base(**a)


@dataclass
class PromptOptions:
    """Prompt tuning's options (`apply(model, "prompt", ...)`; checked by apply_prompt)."""

    n_tokens: Annotated[int, Range(ge=1)] = 20  # soft-prompt length
    init_text: str | None = None  # start from these words' embeddings (+ tokenizer)
    init_ids: list[Annotated[int, Range(ge=0)]] | None = None  # ... or these token ids'


def apply_prompt(
    model: nn.Module,
    n_tokens: int = 20,
    init_text: str | None = None,
    init_ids: list[int] | None = None,
    tokenizer: Any = None,
) -> PromptTunedModel:
    if not isinstance(n_tokens, int) or n_tokens <= 0:
        raise ConfigError(f"prompt n_tokens must be a positive integer, got {n_tokens!r}")
    family = model.config.family
    stack = getattr(model, "encoder" if family == "seq2seq" else "transformer", None)
    if stack is None or not hasattr(stack, "embed"):
        raise ConfigError(
            f"prompt tuning needs a plmkit model with a token embedding, got {type(model).__name__}"
        )
    if model.config.position in ("learned", "sinusoidal", "rotary"):
        if n_tokens >= model.config.max_positions:
            raise ConfigError(
                f"prompt n_tokens={n_tokens} leaves no room in model.max_positions="
                f"{model.config.max_positions}"
            )
    prompt = initial_prompt(stack.embed.tokens, n_tokens, init_text, init_ids, tokenizer)
    return PromptTunedModel(model, prompt)
