"""Prefix-tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022): learned keys and values in front
of every attention layer's own, the base model frozen.

    model = plmkit.peft.apply(model, "prefix", n_tokens=20)                    # MLP re-parameterised
    model = plmkit.peft.apply(model, "prefix", n_tokens=20, projection=False)  # P-tuning v2 (deep prompts)

Each Stack gets a `prefix_encoder` (a PeftModule) holding, per block, P keys and P values of shape
(1, n_kv_head, P, head_dim) for its self-attention and, in an encoder–decoder model's decoder, for its
cross-attention too. A forward pre-hook hands them to the stack (Stack.forward's `prefix` argument) and
Attention puts them in front of the real keys and values (model/attention.py):
  * they are not in the KV cache and have no position: real tokens keep their positions (learned,
    rotary, T5 relative bias), nothing is added to the input (max_positions is not consumed), and
    decoding, beam search (which reorders only the real cache) and streaming work unchanged, since the
    prefix is the same for every batch row;
  * every query sees all P prefix columns, whatever the mask of the real keys (padding, causal,
    prefix-LM, user 3D/4D masks).

Where: every self-attention of every stack (causal, masked and prefix LMs, the task heads, both stacks
of an encoder–decoder model) and the decoder's cross-attention (`cross_attention=True`), with separate
prefixes for each, as in Li & Liang's BART experiments. (The peft library prefixes only the decoder of
an encoder–decoder model, with the same tensors for its self- and cross-attention.)

One method, two parameterisations:
  projection=True   prefix-tuning: an embedding E (P, C) through an MLP C -> hidden -> tanh ->
                    blocks·parts·n_kv·head_dim gives every prefix (Li & Liang's re-parameterisation,
                    which keeps optimisation stable). `fold(model)` replaces the MLP by its output for
                    inference; `save_adapter` writes the folded tensors; and while no gradient is taken
                    (generate, eval) the MLP runs once and its output is reused until a weight changes.
  projection=False  P-tuning v2 (deep prompt tuning): the per-layer keys and values are the parameters.
                    They start as the keys/values the frozen base computes for `init_text` / `init_ids`
                    (Li & Liang §7.2: initialise from real words' activations), else for n random
                    vocabulary tokens, so they start at the scale of the model's own keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.model.stack import Stack
from plmkit.peft.base import PeftModule
from plmkit.peft.prompt import initial_ids


@dataclass(frozen=True)
class PrefixOptions:
    n_tokens: Annotated[int, Range(ge=1)] = 20  # P: prefix length, per attention layer
    projection: bool = True  # MLP re-parameterisation (prefix-tuning); False: P-tuning v2
    hidden: Annotated[int, Range(ge=1, off="null", means="d_model")] | None = None  # the MLP's width
    cross_attention: bool = True  # encoder–decoder: prefixes for the decoder's cross-attention too
    init_text: str | None = None  # projection=False: start from these words' keys/values (+ tokenizer)
    init_ids: list[Annotated[int, Range(ge=0)]] | None = None  # ... or these token ids'

    def validate(self) -> None:
        if not isinstance(self.n_tokens, int) or isinstance(self.n_tokens, bool) or self.n_tokens <= 0:
            raise ConfigError(f"prefix n_tokens must be a positive integer, got {self.n_tokens!r}")
        if not isinstance(self.projection, bool) or not isinstance(self.cross_attention, bool):
            raise ConfigError("prefix projection and cross_attention must be true or false")
        if self.hidden is not None and (not isinstance(self.hidden, int) or self.hidden <= 0):
            raise ConfigError(f"prefix hidden must be a positive integer, got {self.hidden!r}")
        if self.projection and (self.init_text is not None or self.init_ids is not None):
            raise ConfigError(
                "prefix init_text / init_ids set the start of P-tuning v2's prefixes; with "
                "projection=true the prefixes come from the MLP: use projection=false"
            )


class PrefixEncoder(PeftModule):
    """All prefixes of one stack, as a (blocks, parts, n_kv, P, head_dim) tensor; parts are k, v and, for
    a decoder's cross-attention, cross k, cross v."""

    def __init__(
        self,
        shape: tuple[int, int, int, int, int],
        d_model: int,
        hidden: int | None,
        start: torch.Tensor | None,
        like: torch.Tensor,
    ) -> None:
        super().__init__()
        self.shape = shape
        blocks, parts, n_kv, n_tokens, head_dim = shape
        factory = dict(device=like.device, dtype=like.dtype)
        if start is None:  # projection: E (P, C) -> MLP -> every prefix
            hidden = hidden or d_model
            self.embedding = nn.Parameter(torch.randn(n_tokens, d_model, **factory))  # as nn.Embedding
            self.mlp = nn.Sequential(
                nn.Linear(d_model, hidden, **factory),
                nn.Tanh(),
                nn.Linear(hidden, blocks * parts * n_kv * head_dim, **factory),
            )
            self.peft_children = ("embedding", "mlp")
        else:
            self.key_values = nn.Parameter(start.detach().clone().to(**factory))
            self.peft_children = ("key_values",)
        self._inference: tuple[tuple, torch.Tensor] | None = None  # (weights' versions, MLP output)

    @property
    def projection(self) -> bool:
        return hasattr(self, "mlp")

    def _project(self) -> torch.Tensor:
        blocks, parts, n_kv, n_tokens, head_dim = self.shape
        out = self.mlp(self.embedding)  # (P, blocks·parts·n_kv·hd)
        return out.view(n_tokens, blocks, parts, n_kv, head_dim).permute(1, 2, 3, 0, 4)

    def key_values_tensor(self) -> torch.Tensor:
        """(blocks, parts, n_kv, P, head_dim)."""
        if not self.projection:
            return self.key_values
        if torch.is_grad_enabled():
            self._inference = None
            return self._project()
        # no gradient (generate, eval): one MLP call, reused while no weight changes (an optimizer
        # step or load_state_dict bumps a parameter's version counter; .to() gives it new memory)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        if self._inference is None or self._inference[0] != key:
            self._inference = (key, self._project().contiguous())  # contiguous: as a folded model's
        return self._inference[1]

    def forward(self) -> list[tuple[torch.Tensor, ...]]:
        """Per block: (k, v) or (k, v, cross k, cross v), each (1, n_kv, P, head_dim), broadcast over rows."""
        kv = self.key_values_tensor()
        return [tuple(kv[i, j][None] for j in range(kv.shape[1])) for i in range(kv.shape[0])]

    def add_to_stack(self, stack: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of the stack: pass the prefixes as its `prefix` argument."""
        if kwargs.get("prefix") is None:
            kwargs["prefix"] = self()
        return args, kwargs

    @torch.no_grad()
    def fold(self) -> None:
        """Replace E and the MLP by the prefixes they compute (same outputs, P-tuning v2's layout)."""
        if not self.projection:
            return
        kv = self._project().contiguous()
        requires_grad = self.embedding.requires_grad
        del self.mlp, self.embedding
        self.key_values = nn.Parameter(kv, requires_grad=requires_grad)
        self.peft_children = ("key_values",)
        self._inference = None

    def extra_repr(self) -> str:
        blocks, parts, n_kv, n_tokens, head_dim = self.shape
        return (
            f"blocks={blocks}, parts={parts}, n_kv={n_kv}, tokens={n_tokens}, head_dim={head_dim}, "
            f"projection={self.projection}"
        )


# ---- applying --------------------------------------------------------------------------------------
def prefix_stacks(model: nn.Module) -> list[tuple[str, Stack]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Stack)]


def prefix_encoders(model: nn.Module) -> list[tuple[str, PrefixEncoder]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PrefixEncoder)]


def _is_causal(model: nn.Module, stack: Stack) -> bool:
    """A decoder (it has cross-attention) or the stack of a causal-family model."""
    return stack.blocks[0].cross_attn is not None or model.config.family == "causal"


@torch.no_grad()
def _real_key_values(
    model: nn.Module, stacks: list[tuple[str, Stack]], ids: torch.Tensor, cross: bool
) -> dict[str, torch.Tensor]:
    """Per stack, the (blocks, parts, n_kv, P, hd) keys/values the base computes for `ids` (P,): its KV
    cache after reading them (a decoder reads them over the encoder's output of the same ids)."""
    was_training = model.training
    model.eval()
    try:
        ids = ids[None].to(next(model.parameters()).device)  # (1, P)
        out, memory = {}, None
        for name, stack in stacks:  # the encoder comes before the decoder
            is_decoder = stack.blocks[0].cross_attn is not None
            h, cache = stack(ids, None, _is_causal(model, stack), memory=memory if is_decoder else None)
            if not is_decoder:
                memory = h
            layers = [torch.stack(layer[: 4 if is_decoder and cross else 2]) for layer in cache]
            out[name] = torch.stack(layers)[:, :, 0]  # (blocks, parts, n_kv, P, hd)
        return out
    finally:
        model.train(was_training)


def apply_prefix(model: nn.Module, options: PrefixOptions, tokenizer: Any = None) -> list[str]:
    """Give every stack of `model` a prefix encoder (and the hook that uses it); returns their names."""
    options.validate()
    stacks = prefix_stacks(model)
    if not stacks:
        raise ConfigError(
            f"prefix tuning needs a plmkit model with Transformer stacks, got {type(model).__name__}"
        )
    start = None
    if not options.projection:
        vocab = model.config.vocab_size
        ids = initial_ids(vocab, options.n_tokens, options.init_text, options.init_ids, tokenizer, "prefix")
        start = _real_key_values(model, stacks, ids, options.cross_attention)
    names = []
    for name, stack in stacks:
        attn = stack.blocks[0].attn  # head counts from the module (a tensor-parallel shard has fewer)
        cross = stack.blocks[0].cross_attn is not None and options.cross_attention
        shape = (len(stack.blocks), 4 if cross else 2, attn.n_kv_head, options.n_tokens, attn.head_dim)
        like = next(stack.parameters())
        stack.prefix_encoder = PrefixEncoder(
            shape, model.config.d_model, options.hidden, None if start is None else start[name], like
        )
        stack.register_forward_pre_hook(stack.prefix_encoder.add_to_stack, with_kwargs=True)
        names.append(f"{name}.prefix_encoder" if name else "prefix_encoder")
    return names


def fold(model: nn.Module) -> nn.Module:
    """Replace every prefix MLP by the prefixes it computes: same outputs, no MLP at inference, and the
    model becomes a P-tuning v2 model (its recorded options say projection=False)."""
    for _, encoder in prefix_encoders(model):
        encoder.fold()
    config = getattr(model, "peft_config", None)
    if config is not None and config.method == "prefix":
        config.options.update(projection=False, hidden=None)
    return model


def folded_adapter(
    model: nn.Module, tensors: dict[str, torch.Tensor], options: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What an adapter file holds for prefix-tuning: the prefixes themselves (as a folded model has
    them), not E and the MLP that compute them; the model is left as it is."""
    out = {n: t for n, t in tensors.items() if ".prefix_encoder." not in f".{n}"}
    with torch.no_grad():
        for name, encoder in prefix_encoders(model):
            out[f"{name}.key_values"] = encoder.key_values_tensor().detach().contiguous()
    return out, {**options, "projection": False, "hidden": None}
