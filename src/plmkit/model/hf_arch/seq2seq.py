"""Encoder-decoder architectures: BART and T5."""

from __future__ import annotations

from typing import Any

from plmkit.errors import CheckpointError
from plmkit.model.config import ModelConfig
from plmkit.model.hf_arch.rules import (
    ACTIVATION_TO_HF,
    Architecture,
    DropoutFields,
    Rule,
    activation_from_hf,
    linear_pairs,
    norm_pairs,
    rule_list,
    shared_hf_fields,
)


# ---- BART --------------------------------------------------------------------------------------
def _bart_config(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise CheckpointError("pre-norm BART variants (mBART) are not supported yet")
    return ModelConfig(
        family="seq2seq",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layer=hf["encoder_layers"],
        n_decoder_layer=hf["decoder_layers"],
        n_head=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"],
        max_positions=hf["max_position_embeddings"],
        position_offset=2,
        pre_norm=False,
        embedding_norm=True,
        final_norm=False,
        norm_eps=1e-5,
        activation=activation_from_hf(hf.get("activation_function", "gelu")),
        scale_embeddings=bool(hf.get("scale_embedding", False)),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2),
    )


def _bart_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **shared_hf_fields(c),
        d_model=c.d_model,
        encoder_layers=c.n_layer,
        decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.n_head,
        decoder_attention_heads=c.n_head,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        max_position_embeddings=c.max_positions,
        activation_function=ACTIVATION_TO_HF[c.activation],
        scale_embedding=c.scale_embeddings,
        decoder_start_token_id=c.decoder_start_token_id,
        forced_eos_token_id=c.eos_token_id,
    )


def _bart_weights(c: ModelConfig, head: bool) -> list[Rule]:
    pairs = [("encoder.embed.tokens.weight", "model.shared.weight")]
    for side, n_layer in (("encoder", c.n_layer), ("decoder", c.decoder_layers)):
        m = f"model.{side}."
        pairs += [(f"{side}.embed.positions.weight", m + "embed_positions.weight")]
        pairs += norm_pairs(f"{side}.embed.norm", m + "layernorm_embedding")
        for i in range(n_layer):
            b, h = f"{side}.blocks.{i}.", f"{m}layers.{i}."
            pairs += linear_pairs(b + "attn.qkv", tuple(f"{h}self_attn.{n}_proj" for n in "qkv"), True)
            pairs += linear_pairs(b + "attn.out", h + "self_attn.out_proj", True) + norm_pairs(
                b + "attn_norm", h + "self_attn_layer_norm"
            )
            if side == "decoder":
                pairs += linear_pairs(b + "cross_attn.q", h + "encoder_attn.q_proj", True)
                pairs += linear_pairs(
                    b + "cross_attn.kv", (h + "encoder_attn.k_proj", h + "encoder_attn.v_proj"), True
                )
                pairs += linear_pairs(b + "cross_attn.out", h + "encoder_attn.out_proj", True)
                pairs += norm_pairs(b + "cross_norm", h + "encoder_attn_layer_norm")
            pairs += linear_pairs(b + "mlp.fc_in", h + "fc1", True) + linear_pairs(
                b + "mlp.fc_out", h + "fc2", True
            )
            pairs += norm_pairs(b + "mlp_norm", h + "final_layer_norm")
    rules = rule_list("", pairs)
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    if head and c.lm_head_bias:  # transformers keeps it as a buffer, zero unless a checkpoint set it
        rules.append(Rule("lm_head.decoder.bias", ("final_logits_bias",), row=True))
    return rules


# ---- T5 ----------------------------------------------------------------------------------------
def _t5_config(hf: dict[str, Any]) -> ModelConfig:
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = proj.split("-")[-1]
    act = "gelu_new" if act == "gelu" and gated else act  # T5 v1.1 "gated-gelu" is the tanh GELU
    # v1.0 ties and scales the output by d_model**-0.5; v1.1 unties and does not scale. transformers 5
    # always ties T5 and records the scaling separately as scale_decoder_outputs.
    tied = hf.get("tie_word_embeddings", True) is not False
    return ModelConfig(
        family="seq2seq",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layer=hf["num_layers"],
        n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_ff=hf["d_ff"],
        max_positions=hf.get("n_positions", 512),
        position="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_bias=False,
        activation=activation_from_hf(act),
        gated_mlp=gated,
        attention_bias=False,
        mlp_bias=False,
        attention_scale=1.0,
        tie_embeddings=tied,
        tied_output_scale=hf.get("scale_decoder_outputs", tied),
        pad_token_id=hf.get("pad_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0),
    )


def _t5_export(c: ModelConfig) -> dict[str, Any]:
    act = {"gelu_tanh": "gelu"}.get(c.activation, c.activation) if c.gated_mlp else c.activation
    return dict(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        num_layers=c.n_layer,
        num_decoder_layers=c.decoder_layers,
        num_heads=c.n_head,
        d_kv=c.dim_per_head,
        d_ff=c.d_ff,
        relative_attention_num_buckets=c.relative_buckets,
        relative_attention_max_distance=c.relative_max_distance,
        layer_norm_epsilon=c.norm_eps,
        feed_forward_proj=("gated-" if c.gated_mlp else "") + act,
        tie_word_embeddings=c.tie_embeddings,
        scale_decoder_outputs=c.tied_output_scale,
        pad_token_id=c.pad_token_id,
        eos_token_id=c.eos_token_id,
        decoder_start_token_id=c.decoder_start_token_id,
        is_encoder_decoder=True,
    )


def _t5_weights(c: ModelConfig, head: bool) -> list[Rule]:
    pairs = [("encoder.embed.tokens.weight", "shared.weight")]
    for side, n_layer in (("encoder", c.n_layer), ("decoder", c.decoder_layers)):
        pairs.append(
            (
                f"{side}.relative_bias.bias.weight",
                f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )
        )
        for i in range(n_layer):
            b, h = f"{side}.blocks.{i}.", f"{side}.block.{i}.layer."
            pairs += linear_pairs(b + "attn.qkv", tuple(f"{h}0.SelfAttention.{n}" for n in "qkv"), False)
            pairs += linear_pairs(b + "attn.out", h + "0.SelfAttention.o", False) + norm_pairs(
                b + "attn_norm", h + "0.layer_norm", False
            )
            ff = 1
            if side == "decoder":
                pairs += linear_pairs(b + "cross_attn.q", h + "1.EncDecAttention.q", False)
                pairs += linear_pairs(
                    b + "cross_attn.kv", (h + "1.EncDecAttention.k", h + "1.EncDecAttention.v"), False
                )
                pairs += linear_pairs(b + "cross_attn.out", h + "1.EncDecAttention.o", False)
                pairs += norm_pairs(b + "cross_norm", h + "1.layer_norm", False)
                ff = 2
            wi = (
                (f"{h}{ff}.DenseReluDense.wi_0", f"{h}{ff}.DenseReluDense.wi_1")
                if c.gated_mlp
                else f"{h}{ff}.DenseReluDense.wi"
            )
            pairs += linear_pairs(b + "mlp.fc_in", wi, False) + linear_pairs(
                b + "mlp.fc_out", f"{h}{ff}.DenseReluDense.wo", False
            )
            pairs += norm_pairs(b + "mlp_norm", f"{h}{ff}.layer_norm", False)
        pairs += norm_pairs(f"{side}.final_norm", f"{side}.final_layer_norm", False)
    rules = rule_list("", pairs)
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


BART = Architecture(
    "bart", _bart_config, _bart_export, _bart_weights, "BartForConditionalGeneration", "BartModel",
    DropoutFields(("dropout",), "attention_dropout", 0.1, 0.0),
)  # fmt: skip
T5 = Architecture(
    "t5", _t5_config, _t5_export, _t5_weights, "T5ForConditionalGeneration", "T5Model",
    DropoutFields(("dropout_rate",), "dropout_rate", 0.1, 0.1),  # T5 drops attention weights at the same rate
)  # fmt: skip
