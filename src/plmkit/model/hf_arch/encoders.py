"""Encoder-only architectures: BERT and RoBERTa (and their pooler)."""

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


# ---- BERT / RoBERTa ----------------------------------------------------------------------------
def _bert_config(hf: dict[str, Any], roberta: bool = False) -> ModelConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"position_embedding_type={hf['position_embedding_type']!r} is not supported (only absolute)"
        )
    offset = (hf.get("pad_token_id", 1) + 1) if roberta else 0  # RoBERTa counts positions from pad_id + 1
    return ModelConfig(
        family="masked",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_positions=hf["max_position_embeddings"] - offset,
        position_offset=offset,
        type_vocab_size=hf.get("type_vocab_size", 2),
        pre_norm=False,
        embedding_norm=True,
        final_norm=False,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation_from_hf(hf.get("hidden_act", "gelu")),
        lm_head_bias=True,
        lm_head_transform=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id", 0),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )


def _bert_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **shared_hf_fields(c),
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        intermediate_size=c.d_ff,
        max_position_embeddings=c.max_positions + c.position_offset,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.norm_eps,
        hidden_act=ACTIVATION_TO_HF[c.activation],
        position_embedding_type="absolute",
    )


def _bert_body(c: ModelConfig, base: str) -> list[tuple[str, str | tuple[str, ...]]]:
    e = f"{base}embeddings."
    pairs = [
        ("embed.tokens.weight", e + "word_embeddings.weight"),
        ("embed.positions.weight", e + "position_embeddings.weight"),
    ]
    if c.type_vocab_size:
        pairs.append(("embed.token_types.weight", e + "token_type_embeddings.weight"))
    pairs += norm_pairs("embed.norm", e + "LayerNorm")
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"{base}encoder.layer.{i}."
        qkv = tuple(f"{h}attention.self.{n}" for n in ("query", "key", "value"))
        pairs += linear_pairs(b + "attn.qkv", qkv, True) + linear_pairs(
            b + "attn.out", h + "attention.output.dense", True
        )
        pairs += norm_pairs(b + "attn_norm", h + "attention.output.LayerNorm")
        pairs += linear_pairs(b + "mlp.fc_in", h + "intermediate.dense", True)
        pairs += linear_pairs(b + "mlp.fc_out", h + "output.dense", True) + norm_pairs(
            b + "mlp_norm", h + "output.LayerNorm"
        )
    return pairs


def _bert_weights(c: ModelConfig, head: bool, roberta: bool = False) -> list[Rule]:
    rules = rule_list("transformer.", _bert_body(c, "roberta." if roberta else "bert."))
    if head:
        h = "lm_head." if roberta else "cls.predictions."
        norm = "lm_head.layer_norm" if roberta else "cls.predictions.transform.LayerNorm"
        dense = "lm_head.dense" if roberta else "cls.predictions.transform.dense"
        rules += rule_list(
            "lm_head.", linear_pairs("transform", dense, True) + norm_pairs("transform_norm", norm)
        )
        rules.append(Rule("lm_head.decoder.bias", (h + "bias",)))
        if not c.tie_embeddings:
            rules.append(Rule("lm_head.decoder.weight", (h + "decoder.weight",)))
    return rules


def pooler_rules(model_type: str) -> list[Rule]:
    """BERT/RoBERTa's pooler (dense + tanh on [CLS]), kept by bare-model checkpoints (BertModel)."""
    base = {"bert": "bert.", "roberta": "roberta."}.get(model_type)
    if base is None:
        return []
    return [Rule(f"pooler.{p}", (f"{base}pooler.dense.{p}",)) for p in ("weight", "bias")]


BERT_DROPOUT = DropoutFields(("hidden_dropout_prob",), "attention_probs_dropout_prob", 0.1, 0.1)
BERT = Architecture(
    "bert", _bert_config, _bert_export, _bert_weights, "BertForMaskedLM", "BertModel", BERT_DROPOUT
)
ROBERTA = Architecture(
    "roberta",
    lambda hf: _bert_config(hf, roberta=True),
    _bert_export,
    lambda c, head: _bert_weights(c, head, roberta=True),
    "RobertaForMaskedLM",
    "RobertaModel",
    BERT_DROPOUT,
)
