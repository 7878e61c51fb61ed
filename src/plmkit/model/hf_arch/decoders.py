"""Decoder-only architectures: GPT-2, LLaMA and Qwen2."""

from __future__ import annotations

from collections.abc import Callable
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
        activation=activation_from_hf(hf.get("activation_function", "gelu_new")),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )


def _gpt2_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **shared_hf_fields(c),
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=c.d_ff,
        n_positions=c.max_positions,
        activation_function=ACTIVATION_TO_HF[c.activation],
        layer_norm_epsilon=c.norm_eps,
    )


def _gpt2_weights(c: ModelConfig, head: bool) -> list[Rule]:
    pairs = [("embed.tokens.weight", "wte.weight"), ("embed.positions.weight", "wpe.weight")]
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"h.{i}."
        pairs += norm_pairs(b + "attn_norm", h + "ln_1") + linear_pairs(
            b + "attn.qkv", h + "attn.c_attn", True
        )
        pairs += linear_pairs(b + "attn.out", h + "attn.c_proj", True) + norm_pairs(
            b + "mlp_norm", h + "ln_2"
        )
        pairs += linear_pairs(b + "mlp.fc_in", h + "mlp.c_fc", True) + linear_pairs(
            b + "mlp.fc_out", h + "mlp.c_proj", True
        )
    pairs += norm_pairs("final_norm", "ln_f")
    rules = rule_list(
        "transformer.", [(o, _prefix("transformer.", t)) for o, t in pairs], transpose=("blocks",)
    )
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


def _prefix(prefix: str, names: str | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(prefix + n for n in ((names,) if isinstance(names, str) else names))


# ---- LLaMA / Qwen2 -----------------------------------------------------------------------------
def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise CheckpointError(f"rope type {kind!r} is not supported yet (only default RoPE)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def llama_config(hf: dict[str, Any], qwen: bool = False) -> ModelConfig:
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
        activation=activation_from_hf(hf.get("hidden_act", "silu")),
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


def llama_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **shared_hf_fields(c),
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.kv_heads,
        head_dim=c.dim_per_head,
        intermediate_size=c.d_ff,
        max_position_embeddings=c.max_positions,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.norm_eps,
        hidden_act=ACTIVATION_TO_HF[c.activation],
        attention_bias=c.attention_bias,
        mlp_bias=c.mlp_bias,
    )


Pairs = list[tuple[str, str | tuple[str, ...]]]


def llama_mlp_pairs(ours: str, theirs: str, bias: bool) -> Pairs:
    """A gated MLP: our fc_in (gate | up) and fc_out, their gate_proj, up_proj and down_proj."""
    pairs = linear_pairs(ours + "fc_in", (theirs + "gate_proj", theirs + "up_proj"), bias)
    return pairs + linear_pairs(ours + "fc_out", theirs + "down_proj", bias)


def _llama_mlp(c: ModelConfig, i: int, b: str, h: str) -> Pairs:
    return llama_mlp_pairs(b + "mlp.", h + "mlp.", c.mlp_bias)


def llama_weights(
    c: ModelConfig, head: bool, mlp: Callable[[ModelConfig, int, str, str], Pairs]
) -> list[Rule]:
    """The LLaMA layout's rules; `mlp(config, layer, our prefix, their prefix)` names each block's
    feed-forward (the MoE architectures differ only there)."""
    qkv_bias = c.attention_bias if c.qkv_bias is None else c.qkv_bias
    pairs = [("embed.tokens.weight", "model.embed_tokens.weight")]
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        qkv = tuple(f"{h}self_attn.{n}_proj" for n in "qkv")
        pairs += norm_pairs(b + "attn_norm", h + "input_layernorm", bias=False)
        pairs += linear_pairs(b + "attn.qkv", qkv, qkv_bias) + linear_pairs(
            b + "attn.out", h + "self_attn.o_proj", c.attention_bias
        )
        pairs += norm_pairs(b + "mlp_norm", h + "post_attention_layernorm", bias=False)
        pairs += mlp(c, i, b, h)
    pairs += norm_pairs("final_norm", "model.norm", bias=False)
    rules = rule_list("transformer.", pairs)
    if head and not c.tie_embeddings:
        rules.append(Rule("lm_head.decoder.weight", ("lm_head.weight",)))
    return rules


GPT2 = Architecture(
    "gpt2", _gpt2_config, _gpt2_export, _gpt2_weights, "GPT2LMHeadModel", "GPT2Model",
    DropoutFields(("resid_pdrop", "embd_pdrop"), "attn_pdrop", 0.1, 0.1),
)  # fmt: skip


def _llama_weights(c: ModelConfig, head: bool) -> list[Rule]:
    return llama_weights(c, head, _llama_mlp)


LLAMA_DROPOUT = DropoutFields(attention="attention_dropout")  # LLaMA-style models have no hidden dropout
LLAMA = Architecture(
    "llama", llama_config, llama_export, _llama_weights, "LlamaForCausalLM", "LlamaModel", LLAMA_DROPOUT
)
QWEN2 = Architecture(
    "qwen2",
    lambda hf: llama_config(hf, qwen=True),
    llama_export,
    _llama_weights,
    "Qwen2ForCausalLM",
    "Qwen2Model",
    LLAMA_DROPOUT,
)
