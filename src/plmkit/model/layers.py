"""Building blocks: norms, MLP, positions (sinusoidal, learned, rotary, T5 relative bias), embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.model.config import ModelConfig
from plmkit.model.dropout import Dropout


# ---- norms -------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight, computed in fp32 for stability under bf16/fp16 (as T5/LLaMA)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)


# ---- feed-forward ------------------------------------------------------------------------------
def activation_fn(name: str):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
    }[name]


class MLP(nn.Module):
    """Position-wise feed-forward. Plain: W_out·act(W_in·x). Gated (SwiGLU/GeGLU): W_out·(act(x W_gate) * x W_up),
    with gate and up fused in one matmul (gate first). `d_ff`: a hidden width other than config.d_ff
    (a mixture of experts' shared expert)."""

    def __init__(self, config: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        self.gated = config.gated_mlp
        d_ff = d_ff or config.d_ff
        width = d_ff * (2 if self.gated else 1)
        self.fc_in = nn.Linear(config.d_model, width, bias=config.mlp_bias)
        self.fc_out = nn.Linear(d_ff, config.d_model, bias=config.mlp_bias)
        self.act = activation_fn(config.activation)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.fc_out(self.dropout(h))


# ---- absolute positions ------------------------------------------------------------------------
def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).  (n_positions, dim)"""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, two_i / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


# ---- rotary positions (RoPE) -------------------------------------------------------------------
class Rotary(nn.Module):
    """RoPE with the LLaMA/GPT-NeoX pairing: dimension j rotates with dimension j + d/2."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, T) -> cos, sin of shape (B, 1, T, head_dim), broadcast over heads."""
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, d)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d): rotate each (j, j+d/2) pair by angle pos·θ_j."""
    return x * cos + rotate_half(x) * sin


# ---- T5 relative position bias -----------------------------------------------------------------
def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Map key-minus-query offsets to T5's buckets: exact buckets for small offsets, log-spaced
    buckets up to max_distance, the last bucket beyond. Bidirectional stacks split the buckets
    between keys before and after the query."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal stack only looks back
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned scalar bias per (bucket, head), added to attention scores (T5). Output (1, H, T_q, T_k)."""

    def __init__(self, config: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_buckets
        self.max_distance = config.relative_max_distance
        self.bias = nn.Embedding(config.relative_buckets, config.n_head)

    def forward(self, t_q: int, t_k: int, past: int = 0) -> torch.Tensor:
        device = self.bias.weight.device
        q = torch.arange(past, past + t_q, device=device)[:, None]
        k = torch.arange(t_k, device=device)[None, :]
        buckets = relative_position_bucket(k - q, self.bidirectional, self.num_buckets, self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)[None]


# ---- embeddings --------------------------------------------------------------------------------
class Embeddings(nn.Module):
    """Token (+ absolute position, + segment, + GLM block position) embeddings, optional norm, dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        n_pos = config.max_positions + config.position_offset
        self.positions: nn.Embedding | None = None
        if config.position == "learned":
            self.positions = nn.Embedding(n_pos, config.d_model)
        elif config.position == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(n_pos, config.d_model), persistent=False)
        self.token_types = (
            nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        )
        self.block_positions = nn.Embedding(n_pos, config.d_model) if config.block_positions else None
        self.norm = make_norm(config) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)
        self.scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        block_position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.tokens(input_ids)  # (B, T, C)
        if self.scale != 1.0:
            x = x * self.scale
        # left pads may carry position -1 (cumsum(mask) - 1); they are masked, any valid index will do
        offset_positions = position_ids.clamp(min=0) + self.config.position_offset
        if self.positions is not None:
            x = x + self.positions(offset_positions)
        elif self.config.position == "sinusoidal":
            x = x + self.sinusoid[offset_positions].to(x.dtype)
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_types(token_type_ids)
        if self.block_positions is not None:
            if block_position_ids is None:
                block_position_ids = torch.zeros_like(input_ids)
            x = x + self.block_positions(block_position_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)
