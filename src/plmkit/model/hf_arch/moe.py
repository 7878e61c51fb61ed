"""Mixture-of-experts decoders: Mixtral and Qwen2-MoE (the LLaMA layout with routed feed-forwards).

Their checkpoints store each expert's gate / up / down projection as its own tensor
(`experts.{e}.w1|w3|w2` in Mixtral, `experts.{e}.gate_proj|up_proj|down_proj` in Qwen2-MoE), as
transformers' save_pretrained writes them; ours stacks them: `mlp.experts.fc_in` (E, 2·F, C) is
[gate_0; up_0; gate_1; up_1; ...] read row-wise, `mlp.experts.fc_out` (E, C, F) is [down_0; down_1; ...].
Routing: Mixtral renormalises the top-k probabilities (norm_topk_prob=True); Qwen2-MoE keeps the full
softmax's unless its config says norm_topk_prob, and adds a shared expert with a sigmoid gate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from plmkit.errors import CheckpointError
from plmkit.model.config import ModelConfig
from plmkit.model.hf_arch.decoders import (
    LLAMA_DROPOUT,
    Pairs,
    llama_config,
    llama_export,
    llama_mlp_pairs,
    llama_weights,
)
from plmkit.model.hf_arch.rules import Architecture, Rule, linear_pairs


def _no_sliding_window(hf: dict[str, Any], name: str) -> None:
    window = hf.get("sliding_window")
    used = hf.get("use_sliding_window", window is not None)
    if used and window and window < hf.get("max_position_embeddings", 0):
        raise CheckpointError(
            f"{name} with sliding-window attention (sliding_window={window}) is not supported: plmkit "
            "attends over the whole context"
        )


def _expert_pairs(b: str, h: str, c: ModelConfig, gate: str, up: str, down: str) -> Pairs:
    """The stacked experts of one block from the per-expert tensors `{h}experts.{e}.{gate|up|down}`."""
    experts = [f"{h}experts.{e}." for e in range(c.n_experts)]
    fc_in = tuple(f"{x}{name}.weight" for x in experts for name in (gate, up))
    fc_out = tuple(f"{x}{down}.weight" for x in experts)
    return [(b + "mlp.experts.fc_in", fc_in), (b + "mlp.experts.fc_out", fc_out)]


# ---- Mixtral ---------------------------------------------------------------------------------------------
def _mixtral_config(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("router_jitter_noise"):
        raise CheckpointError(
            f"Mixtral with router_jitter_noise={hf['router_jitter_noise']} is not supported (plmkit's router "
            "has no input jitter); set it to 0.0 in config.json"
        )
    _no_sliding_window(hf, "Mixtral")
    config = llama_config(hf)
    return dataclasses.replace(
        config,
        attention_bias=False,  # MixtralAttention and its experts have no biases
        mlp_bias=False,
        n_experts=hf["num_local_experts"],
        top_k=hf["num_experts_per_tok"],
        norm_topk_prob=True,
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        router_z_loss_coef=0.0,
    )


def _mixtral_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **llama_export(c),
        num_local_experts=c.n_experts,
        num_experts_per_tok=c.top_k,
        router_aux_loss_coef=c.router_aux_loss_coef,
        sliding_window=None,
    )


def _mixtral_mlp(c: ModelConfig, i: int, b: str, h: str) -> Pairs:
    h += "block_sparse_moe."
    return [(b + "mlp.router.weight", h + "gate.weight"), *_expert_pairs(b, h, c, "w1", "w3", "w2")]


def _mixtral_weights(c: ModelConfig, head: bool) -> list[Rule]:
    return llama_weights(c, head, _mixtral_mlp)


# ---- Qwen2-MoE -------------------------------------------------------------------------------------------
def _qwen2_moe_config(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("mlp_only_layers"):
        raise CheckpointError(
            f"Qwen2-MoE with mlp_only_layers={hf['mlp_only_layers']} is not supported; plmkit places dense "
            "blocks by decoder_sparse_step (model.moe_every) only"
        )
    _no_sliding_window(hf, "Qwen2-MoE")
    config = dataclasses.replace(  # biases on q, k, v only
        llama_config(hf, qwen=True),
        qkv_bias=bool(hf.get("qkv_bias", True)),
        attention_bias=False,
        mlp_bias=False,
    )
    if not hf.get("num_experts"):
        return config  # every block dense: a Qwen2 model
    return dataclasses.replace(
        config,
        n_experts=hf["num_experts"],
        top_k=hf["num_experts_per_tok"],
        expert_d_ff=hf["moe_intermediate_size"],
        n_shared_experts=1,
        shared_expert_d_ff=hf["shared_expert_intermediate_size"],
        shared_expert_gate=True,
        moe_every=hf.get("decoder_sparse_step", 1),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
        router_z_loss_coef=0.0,
    )


def _qwen2_moe_export(c: ModelConfig) -> dict[str, Any]:
    return dict(
        **llama_export(c),
        qkv_bias=True if c.qkv_bias is None else c.qkv_bias,
        num_experts=c.n_experts,
        num_experts_per_tok=c.top_k,
        moe_intermediate_size=c.expert_width,
        shared_expert_intermediate_size=c.shared_expert_width,
        decoder_sparse_step=c.moe_every,
        mlp_only_layers=[],
        norm_topk_prob=c.norm_topk_prob,
        router_aux_loss_coef=c.router_aux_loss_coef,
        use_sliding_window=False,
    )


def _qwen2_moe_mlp(c: ModelConfig, i: int, b: str, h: str) -> Pairs:
    h += "mlp."
    if not c.is_moe_layer(i):
        return llama_mlp_pairs(b + "mlp.", h, c.mlp_bias)
    pairs: Pairs = [(b + "mlp.router.weight", h + "gate.weight")]
    pairs += _expert_pairs(b, h, c, "gate_proj", "up_proj", "down_proj")
    pairs += llama_mlp_pairs(b + "mlp.shared.", h + "shared_expert.", c.mlp_bias)
    return pairs + linear_pairs(b + "mlp.shared_gate", h + "shared_expert_gate", False)


def _qwen2_moe_weights(c: ModelConfig, head: bool) -> list[Rule]:
    return llama_weights(c, head, _qwen2_moe_mlp)


MIXTRAL = Architecture(
    "mixtral", _mixtral_config, _mixtral_export, _mixtral_weights, "MixtralForCausalLM", "MixtralModel",
    LLAMA_DROPOUT,
)  # fmt: skip
QWEN2_MOE = Architecture(
    "qwen2_moe",
    _qwen2_moe_config,
    _qwen2_moe_export,
    _qwen2_moe_weights,
    "Qwen2MoeForCausalLM",
    "Qwen2MoeModel",
    LLAMA_DROPOUT,
)
