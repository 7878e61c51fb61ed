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

    # mixture of experts (model/moe.py): a routed feed-forward in place of the MLP
    n_experts: Annotated[int, Range(ge=1, off="null", means="a dense MLP in every block")] | None = None
    top_k: Annotated[int, Range(ge=1)] = 2  # experts per token
    # each routed expert's hidden width
    expert_d_ff: Annotated[int, Range(ge=1, off="null", means="d_ff")] | None = None
    # always-on experts beside the routed ones (Qwen2-MoE, DeepSeekMoE), fused into one MLP
    n_shared_experts: Annotated[int, Range(ge=0, off="0", means="no shared expert")] = 0
    shared_expert_d_ff: (
        Annotated[int, Range(ge=1, off="null", means="n_shared_experts x expert_d_ff")] | None
    ) = None
    shared_expert_gate: bool = False  # Qwen2-MoE: the shared output times sigmoid(x w)
    moe_every: Annotated[int, Range(ge=1)] = 1  # block i routes when (i + 1) % moe_every == 0, else dense MLP
    # renormalise the top-k probabilities to sum to 1 (Mixtral); False: the full softmax's (Qwen2-MoE)
    norm_topk_prob: bool = True
    # training only: an expert takes at most capacity_factor x tokens x top_k / n_experts assignments
    capacity_factor: (
        Annotated[float, Range(gt=0, off="null", means="no capacity limit (dropless)")] | None
    ) = None
    router_aux_loss_coef: Annotated[float, Range(ge=0, off="0", means="no load-balancing loss")] = 0.01
    router_z_loss_coef: Annotated[float, Range(ge=0, off="0", means="no router z-loss")] = 0.0

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
    def expert_width(self) -> int:
        return self.expert_d_ff or self.d_ff

    @property
    def shared_expert_width(self) -> int:
        return self.shared_expert_d_ff or self.n_shared_experts * self.expert_width

    def is_moe_layer(self, index: int) -> bool:
        """Whether block `index` (0-based, in its stack) has the routed feed-forward."""
        return self.n_experts is not None and (index + 1) % self.moe_every == 0

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
        self._validate_experts()
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even model.d_model, got {self.d_model}")

    def _validate_experts(self) -> None:
        if self.n_experts is None:
            moe_only = [
                name
                for name in ("n_shared_experts", "shared_expert_d_ff", "expert_d_ff", "capacity_factor")
                if getattr(self, name)
            ]
            if moe_only:
                raise ConfigError(
                    f"model.{moe_only[0]} is set but model.n_experts is null (a dense MLP); "
                    "set model.n_experts to route tokens to experts, or remove it"
                )
            return
        if self.n_experts < 1:
            raise ConfigError(
                f"model.n_experts={self.n_experts} is out of range: must be >= 1, or null for a dense MLP"
            )
        if not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(
                f"model.top_k={self.top_k} must be between 1 and model.n_experts={self.n_experts} "
                "(each token goes to top_k different experts); lower top_k or add experts"
            )
        for name in ("expert_d_ff", "shared_expert_d_ff", "moe_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"model.{name}={value} is out of range: must be >= 1")
        if self.n_shared_experts < 0:
            raise ConfigError(f"model.n_shared_experts={self.n_shared_experts} is out of range: must be >= 0")
        if not self.n_shared_experts and (self.shared_expert_d_ff or self.shared_expert_gate):
            name = "shared_expert_d_ff" if self.shared_expert_d_ff else "shared_expert_gate"
            raise ConfigError(
                f"model.{name} is set but model.n_shared_experts=0; set model.n_shared_experts or remove it"
            )
        if self.moe_every > self.n_layer:
            raise ConfigError(
                f"model.moe_every={self.moe_every} is more than model.n_layer={self.n_layer}: no block "
                "would route; lower model.moe_every (1: every block) or set model.n_experts=null"
            )
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ConfigError(
                f"model.capacity_factor={self.capacity_factor} is out of range: must be > 0, or null for dropless"
            )
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} is out of range: must be >= 0")

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
