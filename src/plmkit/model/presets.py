"""Named architectures as data: each preset is a ModelConfig (sizes from the original papers/releases)."""

from __future__ import annotations

from plmkit.errors import ConfigError, did_you_mean
from plmkit.model.config import ModelConfig

# GPT-2: pre-norm, learned positions, tanh-GELU, tied embeddings, 50257 byte-level BPE tokens.
_GPT2 = dict(
    family="causal",
    vocab_size=50257,
    max_positions=1024,
    activation="gelu_tanh",
    norm_eps=1e-5,
    pad_token_id=None,
    bos_token_id=50256,
    eos_token_id=50256,
)
# BERT: post-norm, embedding LayerNorm, segment embeddings, exact GELU, MLM head with transform + bias.
_BERT = dict(
    family="masked",
    vocab_size=30522,
    max_positions=512,
    type_vocab_size=2,
    pre_norm=False,
    embedding_norm=True,
    final_norm=False,
    norm_eps=1e-12,
    activation="gelu",
    lm_head_bias=True,
    lm_head_transform=True,
    pad_token_id=0,
)
# LLaMA: pre-RMSNorm, rotary, SwiGLU, no biases, untied output.
_LLAMA = dict(
    family="causal",
    position="rotary",
    norm="rmsnorm",
    norm_eps=1e-5,
    activation="silu",
    gated_mlp=True,
    attention_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
    pad_token_id=None,
    bos_token_id=1,
    eos_token_id=2,
)
# BART: post-norm encoder–decoder, learned positions offset by 2, embedding LayerNorm.
_BART = dict(
    family="seq2seq",
    vocab_size=50265,
    max_positions=1024,
    position_offset=2,
    pre_norm=False,
    embedding_norm=True,
    final_norm=False,
    activation="gelu",
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
)
# T5 v1.0: pre-RMSNorm without bias, relative position bias, ReLU, no biases, unscaled attention.
_T5 = dict(
    family="seq2seq",
    vocab_size=32128,
    position="relative",
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_bias=False,
    activation="relu",
    attention_bias=False,
    mlp_bias=False,
    attention_scale=1.0,
    tied_output_scale=True,
    max_positions=512,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    initializer_range=0.05,
)

PRESETS: dict[str, ModelConfig] = {
    "gpt2-tiny": ModelConfig(**_GPT2, d_model=128, n_layer=4, n_head=4, d_ff=512),
    "gpt2-small": ModelConfig(**_GPT2, d_model=768, n_layer=12, n_head=12, d_ff=3072),
    "gpt2-medium": ModelConfig(**_GPT2, d_model=1024, n_layer=24, n_head=16, d_ff=4096),
    "bert-tiny": ModelConfig(**_BERT, d_model=128, n_layer=2, n_head=2, d_ff=512),
    "bert-base": ModelConfig(**_BERT, d_model=768, n_layer=12, n_head=12, d_ff=3072),
    "bert-large": ModelConfig(**_BERT, d_model=1024, n_layer=24, n_head=16, d_ff=4096),
    # RoBERTa: BERT's architecture with a 50265-token BPE, positions from index 2, one segment type.
    "roberta-base": ModelConfig(
        **{**_BERT, "vocab_size": 50265, "type_vocab_size": 1, "norm_eps": 1e-5, "pad_token_id": 1},
        position_offset=2,
        bos_token_id=0,
        eos_token_id=2,
        d_model=768,
        n_layer=12,
        n_head=12,
        d_ff=3072,
    ),
    "bart-base": ModelConfig(**_BART, d_model=768, n_layer=6, n_head=12, d_ff=3072),
    "t5-small": ModelConfig(**_T5, d_model=512, n_layer=6, n_head=8, head_dim=64, d_ff=2048),
    "llama-tiny": ModelConfig(
        **_LLAMA,
        vocab_size=32000,
        d_model=128,
        n_layer=4,
        n_head=4,
        n_kv_head=2,
        d_ff=344,
        max_positions=2048,
    ),
    # The TinyLlama-1.1B shape: LLaMA-2 architecture, 22 layers, grouped-query attention with 4 kv heads.
    "llama-1b": ModelConfig(
        **_LLAMA,
        vocab_size=32000,
        d_model=2048,
        n_layer=22,
        n_head=32,
        n_kv_head=4,
        d_ff=5632,
        max_positions=2048,
    ),
    # UniLM v1 base: BERT-base weights and head in one stack trained with per-example prefix masks.
    "unilm-base": ModelConfig(**{**_BERT, "family": "prefix"}, d_model=768, n_layer=12, n_head=12, d_ff=3072),
}


def get_preset(name: str) -> ModelConfig:
    """A copy of the named preset's ModelConfig (safe to modify)."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown model preset {name!r}{did_you_mean(name, PRESETS)}; available: {', '.join(PRESETS)}"
        )
    return PRESETS[name].replace()
