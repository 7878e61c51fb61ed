"""The four family language models on the shared stack (model/stack.py).

    family  = which stacks run + which mask they use + which head reads them

CausalLM (GPT/LLaMA): causal mask, labels shifted inside. MaskedLM (BERT/RoBERTa): no mask.
PrefixLM (UniLM/GLM): prefix mask chosen per example. Seq2SeqLM (BART/T5): bidirectional encoder,
causal decoder with cross-attention.

Generation calls forward with `check_inputs=False` (it checked the prompt once) and
`compute_logits=False` (it applies the LM head to the last position itself, plmkit.generation).
Given labels, a forward returns the loss without logits unless `compute_logits=True`
(PretrainedModel.lm_output): training never makes the full (B, T, V) logits.
"""

from __future__ import annotations

import torch

from plmkit.errors import ShapeError
from plmkit.model import masks, moe
from plmkit.model.config import ModelConfig
from plmkit.model.pretrained import (
    LMHead,
    ModelOutput,
    PretrainedModel,
    past_length,
    self_attention_allowed,
)
from plmkit.model.stack import Cache, Stack


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
        check_inputs: bool = True,
        compute_logits: bool | None = None,
    ) -> ModelOutput:
        past = past_length(past_key_values)
        if check_inputs:
            self._check(input_ids, past)
        b, t = input_ids.shape
        allowed, is_causal = self_attention_allowed(
            self.mask_kind, b, t, past, input_ids.device, attention_mask, prefix_lengths
        )
        with moe.recording(self.config) as routings:  # None without experts
            h, cache = self.transformer(
                input_ids,
                allowed,
                is_causal,
                position_ids,
                token_type_ids,
                block_position_ids,
                past_key_values,
            )
        past = cache if use_cache else None
        out = self.lm_output(h, labels, self.shift_labels, compute_logits, past_key_values=past)
        return self.with_routing(out, routings, attention_mask)


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

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, check_inputs: bool = True
    ) -> torch.Tensor:
        if check_inputs:
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
        check_inputs: bool = True,
        compute_logits: bool | None = None,
    ) -> ModelOutput:
        with moe.recording(self.config) as routings:  # None without experts
            out = self._forward(
                input_ids,
                attention_mask,
                decoder_input_ids,
                decoder_attention_mask,
                labels,
                encoder_hidden_states,
                past_key_values,
                use_cache,
                decoder_position_ids,
                check_inputs,
                compute_logits,
            )
        return self.with_routing(out, routings)

    def _forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        decoder_input_ids: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        past_key_values: Cache | None,
        use_cache: bool,
        decoder_position_ids: torch.Tensor | None,
        check_inputs: bool,
        compute_logits: bool | None,
    ) -> ModelOutput:
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ShapeError("Seq2SeqLM needs input_ids or encoder_hidden_states")
            encoder_hidden_states = self.encode(input_ids, attention_mask, check_inputs)
        if decoder_input_ids is None:
            if labels is None:
                raise ShapeError("Seq2SeqLM needs decoder_input_ids or labels (shifted right to make them)")
            decoder_input_ids = self.shift_right(labels)
        past = past_length(past_key_values)
        if check_inputs:
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
        return self.lm_output(
            h,
            labels,
            False,
            compute_logits,
            past_key_values=cache if use_cache else None,
            encoder_hidden_states=encoder_hidden_states,
        )
