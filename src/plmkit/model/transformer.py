"""One block, one stack, four family models.

    Block   = [norm] self-attention [norm] (+ [norm] cross-attention [norm]) + [norm] MLP [norm]
    Stack   = embeddings -> N blocks -> final norm     (one per family; seq2seq has two)
    family  = which stacks run + which mask they use + which head reads them

CausalLM (GPT/LLaMA): causal mask, labels shifted inside. MaskedLM (BERT/RoBERTa): no mask.
PrefixLM (UniLM/GLM): prefix mask chosen per example. Seq2SeqLM (BART/T5): bidirectional encoder,
causal decoder with cross-attention.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from plmkit.errors import ShapeError
from plmkit.model import masks
from plmkit.model.attention import Attention
from plmkit.model.config import ModelConfig
from plmkit.model.layers import MLP, Embeddings, RelativePositionBias, Rotary, activation_fn, make_norm
from plmkit.model.losses import token_loss

Cache = list[tuple[torch.Tensor, ...]]


@dataclass
class ModelOutput:
    """What every model returns; fields not computed stay None. Supports out.loss and out["loss"]."""

    loss: torch.Tensor | None = None  # mean over the targets: loss_sum / targets
    logits: torch.Tensor | None = None  # (B, T, V) or (B, n_labels)
    hidden_states: torch.Tensor | None = None  # last layer (B, T, C)
    past_key_values: Cache | None = None
    encoder_hidden_states: torch.Tensor | None = None  # seq2seq (B, S, C)
    start_logits: torch.Tensor | None = None  # span QA (B, T)
    end_logits: torch.Tensor | None = None
    values: torch.Tensor | None = None  # value head, per token (B, T)
    scores: torch.Tensor | None = None  # reward head, per sequence (B,)
    pooled: torch.Tensor | None = None  # BERT pooler output (B, C)
    loss_sum: torch.Tensor | None = None  # LMs: cross entropy summed over the targets (fp32), for exact accumulation
    targets: torch.Tensor | None = None  # LMs: how many label positions the loss covers

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


def reorder_cache(past_key_values: Cache, index: torch.Tensor) -> Cache:
    """Select batch rows of every cached tensor (beam search keeps the surviving beams)."""
    return [tuple(t.index_select(0, index) for t in layer) for layer in past_key_values]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = Attention(config)
        self.attn_norm = make_norm(config)
        self.cross_attn = Attention(config, cross=True) if cross else None
        self.cross_norm = make_norm(config) if cross else None
        self.mlp = MLP(config)
        self.mlp_norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> tuple[torch.Tensor, tuple | None]:
        """Pre-norm: x + f(norm(x)). Post-norm: norm(x + f(x))."""
        out = sublayer(norm(x) if self.pre_norm else x)
        h, cache = out if isinstance(out, tuple) else (out, None)
        x = x + self.dropout(h)
        return (x if self.pre_norm else norm(x)), cache

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: tuple[torch.Tensor, ...] | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        prefix: tuple[torch.Tensor, ...] | None = None,  # prefix-tuning (k, v[, cross k, cross v])
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        self_cache = cache[:2] if cache is not None else None
        self_prefix = prefix[:2] if prefix is not None else None
        x, new_cache = self._residual(
            x, self.attn_norm,
            lambda h: self.attn(h, mask, rotary, self_cache, is_causal=is_causal, prefix=self_prefix),
        )
        if self.cross_attn is not None:
            cross_cache = cache[2:] if cache is not None and len(cache) == 4 else None
            cross_prefix = prefix[2:] if prefix is not None and len(prefix) == 4 else None
            x, cross = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(h, memory_mask, cache=cross_cache, memory=memory, prefix=cross_prefix),
            )
            new_cache = new_cache + cross
        x, _ = self._residual(x, self.mlp_norm, self.mlp)
        return x, new_cache


class Stack(nn.Module):
    """Embeddings, blocks and the final norm. Owns the per-stack position machinery (rotary, T5 bias).

    `prefix` (prefix-tuning) gives each block extra attention keys/values; plmkit.peft.prefix passes
    it with a forward pre-hook, so the family models need not know about it."""

    def __init__(
        self,
        config: ModelConfig,
        n_layer: int,
        cross: bool = False,
        bidirectional: bool = True,
        tokens: nn.Embedding | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        if tokens is not None:  # seq2seq: encoder and decoder share one token embedding
            self.embed.tokens = tokens
        self.blocks = nn.ModuleList(Block(config, cross) for _ in range(n_layer))
        self.rotary = Rotary(config.dim_per_head, config.rope_theta) if config.position == "rotary" else None
        self.relative_bias = (
            RelativePositionBias(config, bidirectional) if config.position == "relative" else None
        )
        self.final_norm = make_norm(config) if config.pre_norm and config.final_norm else None
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        allowed: torch.Tensor | None,  # boolean (B|1, 1, T, T_past+T); None = no mask (or SDPA causal)
        is_causal: bool = False,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        block_position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        memory: torch.Tensor | None = None,
        memory_allowed: torch.Tensor | None = None,
        prefix: list[tuple[torch.Tensor, ...]] | None = None,  # per block; plmkit.peft.prefix fills it
    ) -> tuple[torch.Tensor, Cache]:
        b, t = input_ids.shape
        past = past_key_values[0][0].shape[2] if past_key_values else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(b, t)
        x = self.embed(input_ids, position_ids, token_type_ids, block_position_ids)  # (B, T, C)

        mask = None
        if self.relative_bias is not None:
            if allowed is None and is_causal:
                allowed = masks.causal(t, past + t, past, input_ids.device)
            mask = self.relative_bias(t, past + t, past).to(x.dtype)  # (1, H, T, T_k)
            if allowed is not None:
                mask = mask + masks.to_additive(allowed, x.dtype)
        elif allowed is not None:
            mask = masks.to_additive(allowed, x.dtype)
        memory_mask = None if memory_allowed is None else masks.to_additive(memory_allowed, x.dtype)
        rotary = self.rotary.cos_sin(position_ids, x.dtype) if self.rotary is not None else None
        fast_causal = is_causal and mask is None  # SDPA builds the causal mask itself

        new_cache: Cache = []
        for i, block in enumerate(self.blocks):
            cache = past_key_values[i] if past_key_values else None
            layer_prefix = prefix[i] if prefix is not None else None
            args = (x, mask, rotary, cache, memory, memory_mask, fast_causal, layer_prefix)
            if self.gradient_checkpointing and self.training:
                # Training never reads the cache back: holding every layer's k, v to the end of the
                # forward would keep most of what checkpointing frees. The returned cache stays empty.
                x, _ = checkpoint(block, *args, use_reentrant=False)
                continue
            x, layer_cache = block(*args)
            new_cache.append(layer_cache)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, new_cache


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits; optional BERT transform (dense, act, norm) before the decoder."""

    def __init__(self, config: ModelConfig, transform: bool = False) -> None:
        super().__init__()
        self.transform = nn.Linear(config.d_model, config.d_model) if transform else None
        self.transform_act = activation_fn(config.activation)
        self.transform_norm = make_norm(config) if transform else None
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.scale = config.d_model**-0.5 if config.tied_output_scale else 1.0
        self._decode_weight: torch.Tensor | None = None  # (C, V) copy while decoding, see `decoding`

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            h = self.transform_norm(self.transform_act(self.transform(h)))
        if self.scale != 1.0:
            h = h * self.scale
        if self._decode_weight is not None and not torch.is_grad_enabled() and h.shape[:-1].numel() <= 32:
            logits = h @ self._decode_weight
            return logits if self.decoder.bias is None else logits + self.decoder.bias
        return self.decoder(h)

    @contextlib.contextmanager
    def decoding(self):
        """While generating, multiply by a contiguous (C, V) copy of the output matrix: decoding's few
        rows make this a matrix-vector product, which CPU BLAS runs 2-3x faster in that layout. The
        copy lives only inside this block, so it can never go stale when the weights are trained."""
        if self.decoder.weight.device.type != "cpu" or not isinstance(self.decoder, nn.Linear):
            yield  # (a quantized head, plmkit.quant, multiplies by its int8 rows with its own kernel)
            return
        self._decode_weight = self.decoder.weight.detach().t().contiguous()
        try:
            yield
        finally:
            self._decode_weight = None


class PretrainedModel(nn.Module):
    """Shared plumbing: weight init, input checks, loss, gradient checkpointing switch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.check_inputs = True  # generation turns this off after checking the prompt once

    def _init_weights(self) -> None:
        std = self.config.initializer_range
        n_blocks = self.config.n_layer + (
            self.config.decoder_layers if self.config.family == "seq2seq" else 0
        )
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                # GPT-2: residual projections scaled by 1/sqrt(2·layers) keep the residual stream's variance flat
                scaled = name.endswith(("attn.out", "mlp.fc_out"))
                nn.init.normal_(module.weight, 0.0, std / math.sqrt(2 * n_blocks) if scaled else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    def tie_weights(self, head: LMHead, tokens: nn.Embedding) -> None:
        if self.config.tie_embeddings:
            head.decoder.weight = tokens.weight

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, Stack):
                module.gradient_checkpointing = enabled

    def _check(self, input_ids: torch.Tensor, past: int = 0, name: str = "input_ids") -> None:
        if not self.check_inputs or torch.compiler.is_compiling():
            return
        if input_ids.dim() != 2:
            raise ShapeError(f"{name} must be 2D (batch, seq), got shape {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if input_ids.numel():
            high, low = int(input_ids.max()), int(input_ids.min())
            if high >= vocab or low < 0:
                bad = high if high >= vocab else low
                raise ShapeError(
                    f"{name} contains token id {bad} outside the model's vocabulary [0, {vocab}); "
                    f"the tokenizer and model.vocab_size={vocab} disagree"
                )
        limit = self.config.max_positions
        if self.config.position in ("learned", "sinusoidal", "rotary") and past + input_ids.shape[1] > limit:
            raise ShapeError(
                f"sequence of {past + input_ids.shape[1]} tokens ({name} length {input_ids.shape[1]} + {past} "
                f"cached) exceeds model.max_positions={limit}; truncate the input or use a longer-context model"
            )


def with_token_loss(out: ModelOutput, labels: torch.Tensor | None, shift: bool) -> ModelOutput:
    """The LM output with its loss (plmkit.model.losses.token_loss) when there are labels."""
    if labels is not None:
        out.loss_sum, out.targets = token_loss(out.logits, labels, shift)
        out.loss = out.loss_sum / out.targets  # nan when no position has a label
    return out


def _past_length(past_key_values: Cache | None) -> int:
    return past_key_values[0][0].shape[2] if past_key_values else 0


def self_attention_allowed(
    kind: str,
    batch: int,
    t: int,
    past: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The boolean mask for a stack's self-attention and whether SDPA may use its causal fast path.

    kind: "bidirectional", "causal" or "prefix". A 3D/4D attention_mask replaces the family's mask."""
    t_k = past + t
    if attention_mask is not None and attention_mask.dim() >= 3:
        return masks.from_user(attention_mask, batch, t, t_k), False
    padding = masks.from_user(attention_mask, batch, t, t_k) if attention_mask is not None else None
    if kind == "bidirectional":
        return padding, False
    if t == 1 and past > 0:  # one new token after the cache (decoding): it sees every earlier key
        return padding, False
    if kind == "prefix" and prefix_lengths is not None:
        allowed = masks.prefix(prefix_lengths.to(device), t, t_k, past)
    else:
        if padding is None and past == 0:
            return None, True  # plain causal: no explicit mask needed
        allowed = masks.causal(t, t_k, past, device)
    return (allowed if padding is None else allowed & padding), False


class StackLM(PretrainedModel):
    """A language model on one stack; subclasses choose the mask (`mask_kind`) and the label alignment."""

    mask_kind = "causal"
    shift_labels = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.transformer = Stack(config, config.n_layer, bidirectional=self.mask_kind != "causal")
        self.lm_head = LMHead(config, transform=config.lm_head_transform)
        self._init_weights()
        self.tie_weights(self.lm_head, self.transformer.embed.tokens)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        token_type_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        block_position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        past = _past_length(past_key_values)
        self._check(input_ids, past)
        b, t = input_ids.shape
        allowed, is_causal = self_attention_allowed(
            self.mask_kind, b, t, past, input_ids.device, attention_mask, prefix_lengths
        )
        h, cache = self.transformer(
            input_ids, allowed, is_causal, position_ids, token_type_ids, block_position_ids, past_key_values
        )
        logits = self.lm_head(h)
        out = ModelOutput(logits=logits, hidden_states=h, past_key_values=cache if use_cache else None)
        return with_token_loss(out, labels, self.shift_labels)


class CausalLM(StackLM):
    """Decoder-only LM (GPT-2, LLaMA, Qwen). labels are the input ids; the shift happens here."""

    mask_kind = "causal"
    shift_labels = True


class PrefixLM(StackLM):
    """One shared stack whose mask is chosen per example (UniLM, GLM): tokens before prefix_lengths[b]
    see each other bidirectionally, later tokens are causal. prefix_length 0 = left-to-right LM,
    >= T = bidirectional (MLM); a 3D attention_mask gives any other mask (e.g. right-to-left).
    labels are aligned with positions (labels[t] is predicted at t); objectives build them."""

    mask_kind = "prefix"
    shift_labels = False


class MaskedLM(StackLM):
    """Encoder-only masked LM (BERT, RoBERTa): bidirectional attention, labels only where masked."""

    mask_kind = "bidirectional"
    shift_labels = False


class Seq2SeqLM(PretrainedModel):
    """Encoder–decoder (BART, T5): bidirectional encoder, causal decoder with cross-attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.encoder = Stack(config, config.n_layer, bidirectional=True)
        self.decoder = Stack(
            config, config.decoder_layers, cross=True, bidirectional=False, tokens=self.encoder.embed.tokens
        )
        self.lm_head = LMHead(config)
        self._init_weights()
        self.tie_weights(self.lm_head, self.encoder.embed.tokens)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check(input_ids)
        b, t = input_ids.shape
        allowed, _ = self_attention_allowed("bidirectional", b, t, 0, input_ids.device, attention_mask)
        h, _ = self.encoder(input_ids, allowed)
        return h

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing input: [start] + labels[:-1], with -100 replaced by the pad id."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_id)
        shifted = torch.cat((start, labels[:, :-1]), dim=1)
        pad = (
            self.config.pad_token_id if self.config.pad_token_id is not None else self.config.decoder_start_id
        )
        return shifted.masked_fill(shifted == -100, pad)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        decoder_position_ids: torch.Tensor | None = None,
    ) -> ModelOutput:
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ShapeError("Seq2SeqLM needs input_ids or encoder_hidden_states")
            encoder_hidden_states = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ShapeError("Seq2SeqLM needs decoder_input_ids or labels (shifted right to make them)")
            decoder_input_ids = self.shift_right(labels)
        past = _past_length(past_key_values)
        self._check(decoder_input_ids, past, "decoder_input_ids")
        b, t = decoder_input_ids.shape
        s = encoder_hidden_states.shape[1]
        memory_allowed = None
        if attention_mask is not None:
            memory_allowed = masks.from_user(attention_mask, b, t, s)
        allowed, is_causal = self_attention_allowed(
            "causal", b, t, past, decoder_input_ids.device, decoder_attention_mask
        )
        h, cache = self.decoder(
            decoder_input_ids,
            allowed,
            is_causal,
            decoder_position_ids,
            past_key_values=past_key_values,
            memory=encoder_hidden_states,
            memory_allowed=memory_allowed,
        )
        logits = self.lm_head(h)
        out = ModelOutput(logits=logits, hidden_states=h, past_key_values=cache if use_cache else None,
                          encoder_hidden_states=encoder_hidden_states)
        return with_token_loss(out, labels, shift=False)
