"""ModelConfig: one dataclass that names every architectural switch (litgpt style).

A model family is a configuration, not a class hierarchy: `family` picks which stacks run and which
attention mask they use; everything else (positions, norms, activations, biases, tying) is a field.
Presets (`presets.py`) are instances of this dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any

from plmkit.config.fields import Range
from plmkit.errors import ConfigError, did_you_mean

FAMILIES = ("causal", "masked", "prefix", "seq2seq")
POSITIONS = ("learned", "sinusoidal", "rotary", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


# the ranges a recipe's model section is checked against (plmkit.recipes.config.ModelSection)
Size = Annotated[int, Range(ge=1)]
TokenId = Annotated[int, Range(ge=0, off="null", means="no such token")]
Dropout = Annotated[float, Range(ge=0, lt=1, off="0", means="no dropout")]


@dataclass
class ModelConfig:
    family: str = "causal"  # causal | masked | prefix | seq2seq (see DESIGN.md table)
    vocab_size: Size = 50257
    d_model: Size = 768
    n_layer: Size = 12  # encoder layers for seq2seq, the only stack otherwise
    # seq2seq decoder layers
    n_decoder_layer: Annotated[int, Range(ge=1, off="null", means="as many as n_layer")] | None = None
    n_head: Size = 12
    # 1: multi-query; else grouped-query
    n_kv_head: Annotated[int, Range(ge=1, off="null", means="n_head (multi-head)")] | None = None
    # T5 decouples it from d_model / n_head
    head_dim: Annotated[int, Range(ge=1, off="null", means="d_model / n_head")] | None = None
    d_ff: Size = 3072
    max_positions: Size = 1024

    # positions
    position: str = "learned"  # learned | sinusoidal | rotary | relative (T5 bias) | none
    position_offset: Annotated[int, Range(ge=0)] = 0  # BART's learned positions start at index 2
    rope_theta: Annotated[float, Range(gt=0)] = 10000.0
    relative_buckets: Size = 32
    relative_max_distance: Size = 128
    # BERT segment (token type) embeddings
    type_vocab_size: Annotated[int, Range(ge=0, off="0", means="no segment embeddings")] = 0
    block_positions: bool = False  # GLM's second (intra-span) position embedding

    # blocks
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: Annotated[float, Range(gt=0)] = 1e-5
    norm_bias: bool = True  # LayerNorm with a bias (T5/LLaMA RMSNorm has none)
    pre_norm: bool = True  # False: post-norm (original Transformer, BERT, BART)
    embedding_norm: bool = False  # a norm right after the embeddings (BERT, BART)
    final_norm: bool = True  # a norm after the last block (pre-norm models)
    activation: str = "gelu"  # gelu (exact) | gelu_tanh | relu | silu
    gated_mlp: bool = False  # SwiGLU (silu) / GeGLU (gelu): act(x W_gate) * (x W_up)
    attention_bias: bool = True  # biases on q/k/v/o projections
    qkv_bias: bool | None = None  # override for q/k/v only (Qwen2: True with attention_bias False)
    mlp_bias: bool = True
    # T5 uses 1.0
    attention_scale: Annotated[float, Range(gt=0, off="null", means="1/sqrt(head_dim)")] | None = None
    dropout: Dropout = 0.0
    attention_dropout: Dropout = 0.0
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model)

    # output head
    tie_embeddings: bool = True
    tied_output_scale: bool = False  # T5 v1.0: scale hidden by d_model**-0.5 before the (tied) LM head
    lm_head_bias: bool = False  # BART's final_logits_bias, BERT's decoder bias
    lm_head_transform: bool = False  # dense + act + norm before the output projection (BERT MLM head)

    # tokens
    pad_token_id: TokenId | None = 0
    bos_token_id: TokenId | None = None
    eos_token_id: TokenId | None = None
    # seq2seq (T5 convention: the pad token)
    decoder_start_token_id: Annotated[int, Range(ge=0, off="null", means="pad_token_id")] | None = None
    initializer_range: Annotated[float, Range(gt=0)] = 0.02

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (source checkpoint, ...)

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer if self.n_decoder_layer is not None else self.n_layer

    @property
    def decoder_start_id(self) -> int:
        start = self.decoder_start_token_id
        if start is None:
            start = self.pad_token_id
        if start is None:
            raise ConfigError("seq2seq model needs decoder_start_token_id or pad_token_id in its config")
        return start

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        def choose(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ConfigError(
                    f"model.{name}={value!r} is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}"
                )

        choose("family", self.family, FAMILIES)
        choose("position", self.position, POSITIONS)
        choose("norm", self.norm, NORMS)
        choose("activation", self.activation, ACTIVATIONS)
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                "change one of them or set model.head_dim"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.kv_heads} "
                "(grouped-query attention shares each key/value head among n_head/n_kv_head query heads)"
            )
        if self.position == "rotary" and self.dim_per_head % 2:
            raise ConfigError(f"rotary positions need an even head dimension, got {self.dim_per_head}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even model.d_model, got {self.d_model}")

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown key {where}.{key}{did_you_mean(key, names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise ConfigError(f"unknown key model.{key}{did_you_mean(key, names)}")
        return dataclasses.replace(self, **changes)
