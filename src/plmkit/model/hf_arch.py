"""Hugging Face architectures, one readable table each: config fields and weight names.

Each architecture gives
  to_config(hf)   : transformers' config.json dict -> ModelConfig
  from_config(c)  : ModelConfig -> config.json dict (for export)
  weights(c, head): the rules mapping plmkit parameter names to Hugging Face names.
A rule's `theirs` lists one name, or several that are concatenated along dim 0 into one of our fused
tensors (q|k|v -> qkv, k|v -> cross kv, gate|up -> fc_in). GPT-2's Conv1D stores weights transposed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plmkit.errors import CheckpointError
from plmkit.model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False  # GPT-2 Conv1D: (in, out) on disk
    row: bool = False  # a vector stored as a (1, N) row (BART's final_logits_bias)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    to_config: Callable[[dict[str, Any]], ModelConfig]
    from_config: Callable[[ModelConfig], dict[str, Any]]
    weights: Callable[[ModelConfig, bool], list[Rule]]  # (config, with LM head) -> rules
    lm_class: str  # transformers class name of the LM architecture (for export)
    base_class: str  # transformers class name of the bare model


def _rules(prefix: str, pairs: list[tuple[str, str | tuple[str, ...]]], transpose: tuple[str, ...] = ()):
    out = []
    for ours, theirs in pairs:
        names = (theirs,) if isinstance(theirs, str) else theirs
        out.append(
            Rule(prefix + ours, names, transpose=ours.endswith(".weight") and ours.startswith(transpose))
        )
    return out


def _linear(ours: str, theirs: str | tuple[str, ...], bias: bool) -> list[tuple[str, str | tuple[str, ...]]]:
    """weight (and bias) pairs of one linear layer, possibly fused from several HF layers."""
    names = (theirs,) if isinstance(theirs, str) else theirs
    pairs: list[tuple[str, str | tuple[str, ...]]] = [(f"{ours}.weight", tuple(f"{n}.weight" for n in names))]
    if bias:
        pairs.append((f"{ours}.bias", tuple(f"{n}.bias" for n in names)))
    return pairs


def _norm(ours: str, theirs: str, bias: bool = True) -> list[tuple[str, str | tuple[str, ...]]]:
    return [(f"{ours}.weight", f"{theirs}.weight")] + ([(f"{ours}.bias", f"{theirs}.bias")] if bias else [])


def _activation(name: str) -> str:
    table = {
        "gelu": "gelu",
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "relu": "relu",
        "silu": "silu",
        "swish": "silu",
    }
    if name not in table:
        raise CheckpointError(f"activation {name!r} is not supported; plmkit maps {', '.join(table)}")
    return table[name]


_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


# ---- GPT-2 -------------------------------------------------------------------------------------
def _gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise CheckpointError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    d = hf["n_embd"]
    return ModelConfig(
        family="causal",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_positions=hf["n_positions"],
        activation=_activation(hf.get("activation_function", "gelu_new")),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )


def _gpt2_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=c.d_ff,
        n_positions=c.max_positions,
        activation_function=_ACT_TO_HF[c.activation],
        layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
    )


def _gpt2_weights(c: ModelConfig, head: bool) -> list[Rule]:
    pairs = [("embed.tokens.weight", "wte.weight"), ("embed.positions.weight", "wpe.weight")]
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"h.{i}."
        pairs += _norm(b + "attn_norm", h + "ln_1") + _linear(b + "attn.qkv", h + "attn.c_attn", True)
        pairs += _linear(b + "attn.out", h + "attn.c_proj", True) + _norm(b + "mlp_norm", h + "ln_2")
        pairs += _linear(b + "mlp.fc_in", h + "mlp.c_fc", True) + _linear(
            b + "mlp.fc_out", h + "mlp.c_proj", True
        )
    pairs += _norm("final_norm", "ln_f")
    rules = _rules("transformer.", [(o, _prefix("transformer.", t)) for o, t in pairs], transpose=("blocks",))
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


def _prefix(prefix: str, names: str | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(prefix + n for n in ((names,) if isinstance(names, str) else names))


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
        activation=_activation(hf.get("hidden_act", "gelu")),
        lm_head_bias=True,
        lm_head_transform=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id", 0),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )


def _bert_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        intermediate_size=c.d_ff,
        max_position_embeddings=c.max_positions + c.position_offset,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.norm_eps,
        hidden_act=_ACT_TO_HF[c.activation],
        tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
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
    pairs += _norm("embed.norm", e + "LayerNorm")
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"{base}encoder.layer.{i}."
        qkv = tuple(f"{h}attention.self.{n}" for n in ("query", "key", "value"))
        pairs += _linear(b + "attn.qkv", qkv, True) + _linear(
            b + "attn.out", h + "attention.output.dense", True
        )
        pairs += _norm(b + "attn_norm", h + "attention.output.LayerNorm")
        pairs += _linear(b + "mlp.fc_in", h + "intermediate.dense", True)
        pairs += _linear(b + "mlp.fc_out", h + "output.dense", True) + _norm(
            b + "mlp_norm", h + "output.LayerNorm"
        )
    return pairs


def _bert_weights(c: ModelConfig, head: bool, roberta: bool = False) -> list[Rule]:
    rules = _rules("transformer.", _bert_body(c, "roberta." if roberta else "bert."))
    if head:
        h = "lm_head." if roberta else "cls.predictions."
        norm = "lm_head.layer_norm" if roberta else "cls.predictions.transform.LayerNorm"
        dense = "lm_head.dense" if roberta else "cls.predictions.transform.dense"
        rules += _rules("lm_head.", _linear("transform", dense, True) + _norm("transform_norm", norm))
        rules.append(Rule("lm_head.decoder.bias", (h + "bias",)))
        if not c.tie_embeddings:
            rules.append(Rule("lm_head.decoder.weight", (h + "decoder.weight",)))
    return rules


# ---- LLaMA / Qwen2 -----------------------------------------------------------------------------
def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise CheckpointError(f"rope type {kind!r} is not supported yet (only default RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_config(hf: dict[str, Any], qwen: bool = False) -> ModelConfig:
    n_head = hf["num_attention_heads"]
    bias = bool(hf.get("attention_bias", False))
    head_dim = hf.get("head_dim")
    head_dim = None if head_dim == hf["hidden_size"] // n_head else head_dim  # None: the default split
    return ModelConfig(
        family="causal",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        d_ff=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 2048),
        position="rotary",
        rope_theta=_rope_theta(hf),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=_activation(hf.get("hidden_act", "silu")),
        gated_mlp=True,
        attention_bias=bias,
        qkv_bias=True if qwen else None,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_first(hf.get("eos_token_id")),
    )


def _first(value: int | list[int] | None) -> int | None:
    return value[0] if isinstance(value, list) else value


def _llama_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.kv_heads,
        head_dim=c.dim_per_head,
        intermediate_size=c.d_ff,
        max_position_embeddings=c.max_positions,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.norm_eps,
        hidden_act=_ACT_TO_HF[c.activation],
        attention_bias=c.attention_bias,
        mlp_bias=c.mlp_bias,
        tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
    )


def _llama_weights(c: ModelConfig, head: bool) -> list[Rule]:
    qkv_bias = c.attention_bias if c.qkv_bias is None else c.qkv_bias
    pairs = [("embed.tokens.weight", "model.embed_tokens.weight")]
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        qkv = tuple(f"{h}self_attn.{n}_proj" for n in "qkv")
        pairs += _norm(b + "attn_norm", h + "input_layernorm", bias=False)
        pairs += _linear(b + "attn.qkv", qkv, qkv_bias) + _linear(
            b + "attn.out", h + "self_attn.o_proj", c.attention_bias
        )
        pairs += _norm(b + "mlp_norm", h + "post_attention_layernorm", bias=False)
        pairs += _linear(b + "mlp.fc_in", (h + "mlp.gate_proj", h + "mlp.up_proj"), c.mlp_bias)
        pairs += _linear(b + "mlp.fc_out", h + "mlp.down_proj", c.mlp_bias)
    pairs += _norm("final_norm", "model.norm", bias=False)
    rules = _rules("transformer.", pairs)
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


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
        activation=_activation(hf.get("activation_function", "gelu")),
        scale_embeddings=bool(hf.get("scale_embedding", False)),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2),
    )


def _bart_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        encoder_layers=c.n_layer,
        decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.n_head,
        decoder_attention_heads=c.n_head,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        max_position_embeddings=c.max_positions,
        activation_function=_ACT_TO_HF[c.activation],
        scale_embedding=c.scale_embeddings,
        tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        decoder_start_token_id=c.decoder_start_token_id,
        forced_eos_token_id=c.eos_token_id,
    )


def _bart_weights(c: ModelConfig, head: bool) -> list[Rule]:
    pairs = [("encoder.embed.tokens.weight", "model.shared.weight")]
    for side, n_layer in (("encoder", c.n_layer), ("decoder", c.decoder_layers)):
        m = f"model.{side}."
        pairs += [(f"{side}.embed.positions.weight", m + "embed_positions.weight")]
        pairs += _norm(f"{side}.embed.norm", m + "layernorm_embedding")
        for i in range(n_layer):
            b, h = f"{side}.blocks.{i}.", f"{m}layers.{i}."
            pairs += _linear(b + "attn.qkv", tuple(f"{h}self_attn.{n}_proj" for n in "qkv"), True)
            pairs += _linear(b + "attn.out", h + "self_attn.out_proj", True) + _norm(
                b + "attn_norm", h + "self_attn_layer_norm"
            )
            if side == "decoder":
                pairs += _linear(b + "cross_attn.q", h + "encoder_attn.q_proj", True)
                pairs += _linear(
                    b + "cross_attn.kv", (h + "encoder_attn.k_proj", h + "encoder_attn.v_proj"), True
                )
                pairs += _linear(b + "cross_attn.out", h + "encoder_attn.out_proj", True)
                pairs += _norm(b + "cross_norm", h + "encoder_attn_layer_norm")
            pairs += _linear(b + "mlp.fc_in", h + "fc1", True) + _linear(b + "mlp.fc_out", h + "fc2", True)
            pairs += _norm(b + "mlp_norm", h + "final_layer_norm")
    rules = _rules("", pairs)
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
        activation=_activation(act),
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
            pairs += _linear(b + "attn.qkv", tuple(f"{h}0.SelfAttention.{n}" for n in "qkv"), False)
            pairs += _linear(b + "attn.out", h + "0.SelfAttention.o", False) + _norm(
                b + "attn_norm", h + "0.layer_norm", False
            )
            ff = 1
            if side == "decoder":
                pairs += _linear(b + "cross_attn.q", h + "1.EncDecAttention.q", False)
                pairs += _linear(
                    b + "cross_attn.kv", (h + "1.EncDecAttention.k", h + "1.EncDecAttention.v"), False
                )
                pairs += _linear(b + "cross_attn.out", h + "1.EncDecAttention.o", False)
                pairs += _norm(b + "cross_norm", h + "1.layer_norm", False)
                ff = 2
            wi = (
                (f"{h}{ff}.DenseReluDense.wi_0", f"{h}{ff}.DenseReluDense.wi_1")
                if c.gated_mlp
                else f"{h}{ff}.DenseReluDense.wi"
            )
            pairs += _linear(b + "mlp.fc_in", wi, False) + _linear(
                b + "mlp.fc_out", f"{h}{ff}.DenseReluDense.wo", False
            )
            pairs += _norm(b + "mlp_norm", f"{h}{ff}.layer_norm", False)
        pairs += _norm(f"{side}.final_norm", f"{side}.final_layer_norm", False)
    rules = _rules("", pairs)
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


def pooler_rules(model_type: str) -> list[Rule]:
    """BERT/RoBERTa's pooler (dense + tanh on [CLS]), kept by bare-model checkpoints (BertModel)."""
    base = {"bert": "bert.", "roberta": "roberta."}.get(model_type)
    if base is None:
        return []
    return [Rule(f"pooler.{p}", (f"{base}pooler.dense.{p}",)) for p in ("weight", "bias")]


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("gpt2", _gpt2_config, _gpt2_export, _gpt2_weights, "GPT2LMHeadModel", "GPT2Model"),
    "bert": Architecture("bert", _bert_config, _bert_export, _bert_weights, "BertForMaskedLM", "BertModel"),
    "roberta": Architecture(
        "roberta",
        lambda hf: _bert_config(hf, roberta=True),
        _bert_export,
        lambda c, head: _bert_weights(c, head, roberta=True),
        "RobertaForMaskedLM",
        "RobertaModel",
    ),
    "bart": Architecture(
        "bart", _bart_config, _bart_export, _bart_weights, "BartForConditionalGeneration", "BartModel"
    ),
    "t5": Architecture("t5", _t5_config, _t5_export, _t5_weights, "T5ForConditionalGeneration", "T5Model"),
    "llama": Architecture(
        "llama", _llama_config, _llama_export, _llama_weights, "LlamaForCausalLM", "LlamaModel"
    ),
    "qwen2": Architecture(
        "qwen2",
        lambda hf: _llama_config(hf, qwen=True),
        _llama_export,
        _llama_weights,
        "Qwen2ForCausalLM",
        "Qwen2Model",
    ),
}
