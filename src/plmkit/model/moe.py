"""Mixture-of-experts feed-forward: a router sends each token to `top_k` of `n_experts` MLPs.

    logits = x W_router                          (N, E)   one row per token
    p      = softmax(logits) ; top-k of p         (N, k)   renormalised to sum 1 when norm_topk_prob
    y      = sum_j p_j · expert_{e_j}(x)  [+ shared(x) · sigmoid(x w_gate)]

`norm_topk_prob=True` is Mixtral's routing (the same as a softmax over the top-k logits alone);
False keeps the full softmax's probabilities (Qwen2-MoE's default). Shared experts (Qwen2-MoE,
DeepSeekMoE) see every token; n of them are one MLP of n times the width.

Dispatch: the (token, slot) assignments are sorted by expert, each expert's rows are contiguous and go
through one grouped product (torch's grouped_mm where it runs the layout, else one matmul per expert);
no loop over tokens, no expert computes a token it was not given. With `capacity_factor` (training
only) an expert keeps at most ceil(factor · N · k / E) assignments, first slots first, then earlier
tokens; the others are dropped (their share of the output is zero, the residual carries the token) and
counted. Evaluation and decoding are dropless.

The router's choices reach the losses through `recording()`: while a model's forward is inside it,
each MoE layer appends a `Routing`; plmkit.model.moe_losses turns them into the load-balancing loss, the
router z-loss and the per-expert counts a run logs. With `expert_group` set (plmkit.model.expert_parallel)
training sends each expert's rows to the rank that computes it and back (all-to-all).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.model.config import ModelConfig
from plmkit.model.dropout import Dropout
from plmkit.model.expert_parallel import ExpertGroup, dispatch
from plmkit.model.layers import MLP, activation_fn


# ---- what each layer's routing leaves behind ---------------------------------------------------------
@dataclass
class Routing:
    """One MoE layer's routing of one forward."""

    logits: torch.Tensor  # (N, E) router logits
    counts: torch.Tensor  # (E,) assignments each expert was given (before any capacity drop)
    dropped: torch.Tensor  # () assignments dropped for capacity (0 when dropless)
    group: Any = None  # training on several data-parallel ranks: their process group (moe_losses)


_RECORD: contextvars.ContextVar[list[Routing] | None] = contextvars.ContextVar("plmkit_moe", default=None)


@contextlib.contextmanager
def recording(config: ModelConfig) -> Iterator[list[Routing] | None]:
    """The routings of the MoE layers run inside (in order); None for a model without experts. A
    context variable, so concurrent forwards in other threads (decoding) keep their own."""
    if config.n_experts is None:
        yield None
        return
    routings: list[Routing] = []
    token = _RECORD.set(routings)
    try:
        yield routings
    finally:
        _RECORD.reset(token)


# ---- the grouped product ----------------------------------------------------------------------------
def _grouped_mm_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """torch's grouped_mm takes these operands: CPU fp32 / bf16, CUDA bf16 (sm80+), rows of 16-byte
    multiples (its kernel's requirement)."""
    if not hasattr(F, "grouped_mm") or x.dtype != weight.dtype:
        return False
    if x.device.type == "cpu":
        ok_dtype = x.dtype in (torch.float32, torch.bfloat16)
    elif x.device.type == "cuda":
        ok_dtype = x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    else:
        return False
    size = x.element_size()
    return ok_dtype and (weight.shape[1] * size) % 16 == 0 and (weight.shape[2] * size) % 16 == 0


def grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows grouped by expert times each expert's matrix: x (S, in) holds counts[e] rows of expert e
    after those of e-1; weight (E, out, in), bias (E, out). Returns (S, out)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):  # grouped_mm is not an autocast op: cast as F.linear would
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    else:
        weight = weight.to(x.dtype)
    if _grouped_mm_runs(x, weight):
        offsets = counts.cumsum(0).to(torch.int32)  # (E,) end row of each expert
        out = F.grouped_mm(x, weight.transpose(1, 2), offs=offsets)
    else:  # one matmul per expert (every expert joins the graph, so each gets a gradient)
        parts = x.split(counts.tolist())
        out = torch.cat([F.linear(part, weight[e]) for e, part in enumerate(parts)])
    if bias is not None:
        out = out + bias.repeat_interleave(counts, dim=0, output_size=x.shape[0])
    return out


class Experts(nn.Module):
    """E MLPs stored as stacked matrices, each laid out as the dense MLP's Linear (out, in):
    fc_in (E, d_ff or 2·d_ff gate|up, C), fc_out (E, C, d_ff)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e, c, f = config.n_experts, config.d_model, config.expert_width
        self.gated = config.gated_mlp
        width = f * (2 if self.gated else 1)
        self.fc_in = nn.Parameter(torch.empty(e, width, c))
        self.fc_out = nn.Parameter(torch.empty(e, c, f))
        self.fc_in_bias = nn.Parameter(torch.zeros(e, width)) if config.mlp_bias else None
        self.fc_out_bias = nn.Parameter(torch.zeros(e, c)) if config.mlp_bias else None
        self.act = activation_fn(config.activation)
        self.dropout = Dropout(config.dropout)

    def init_weights(self, std: float, out_std: float) -> None:
        nn.init.normal_(self.fc_in, 0.0, std)
        nn.init.normal_(self.fc_out, 0.0, out_std)
        for bias in (self.fc_in_bias, self.fc_out_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor, counts: torch.Tensor, first: int = 0) -> torch.Tensor:
        """x (S, C) sorted by expert, counts (E',) rows of experts first .. first + E' - 1 -> (S, C)."""
        every = first == 0 and counts.numel() == self.fc_in.shape[0]

        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            # the whole tensor when every expert runs: a slice's backward would write a zero-filled copy
            return t if t is None or every else t[first : first + counts.numel()]

        h = grouped_linear(x, part(self.fc_in), counts, part(self.fc_in_bias))  # (S, W)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return grouped_linear(self.dropout(h), part(self.fc_out), counts, part(self.fc_out_bias))  # (S, C)


# ---- the layer ---------------------------------------------------------------------------------------
class MoE(nn.Module):
    """The routed feed-forward of a block (the `mlp` of a block where config.is_moe_layer)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.top_k
        self.norm_topk_prob = config.norm_topk_prob
        self.capacity_factor = config.capacity_factor
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = Experts(config)
        # set by plmkit.model.expert_parallel for training on several ranks (never saved)
        self.data_group: Any = None  # the data-parallel ranks whose micro-batch the router losses cover
        self.expert_group: ExpertGroup | None = None  # the ranks that split the experts' computation
        self.shared = None
        self.shared_gate = None
        if config.n_shared_experts:
            self.shared = MLP(config, d_ff=config.shared_expert_width)
            if config.shared_expert_gate:
                self.shared_gate = nn.Linear(config.d_model, 1, bias=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> (router logits (N, E), top-k weights (N, k) fp32, top-k experts (N, k))."""
        logits = self.router(x)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k), best first
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights, experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        n, k = x.shape[0], self.top_k
        logits, weights, experts = self.route(x)
        # assignments in slot-major order: a = j·N + n (every token's first choice, then the second, ...)
        assigned = experts.t().reshape(-1)  # (S,) S = k·N
        order = torch.argsort(assigned, stable=True)  # (S,) grouped by expert, earlier slots/tokens first
        counts = torch.bincount(assigned, minlength=self.n_experts)  # (E,)
        kept_counts, dropped = counts, counts.new_zeros(())
        if self.capacity_factor is not None and self.training:
            capacity = math.ceil(self.capacity_factor * n * k / self.n_experts)
            starts = counts.cumsum(0) - counts  # (E,) first sorted row of each expert
            rank = torch.arange(order.numel(), device=x.device) - starts[assigned[order]]
            order = order[rank < capacity]  # (S',) the kept assignments, still grouped
            kept_counts = counts.clamp(max=capacity)
            dropped = (counts - kept_counts).sum()
        rows = x[order % n]  # (S', C) grouped by expert
        if self.expert_group is not None and self.training:  # each rank computes its experts' rows
            h = dispatch(rows, kept_counts, self.expert_group, self.experts)
        else:
            h = self.experts(rows, kept_counts)  # (S', C)
        h = h * weights.t().reshape(-1)[order, None].to(h.dtype)
        # back to (slot, token) places (dropped ones stay 0), summed over the slots
        out = h.new_zeros(k * n, h.shape[-1]).index_copy(0, order, h).view(k, n, -1).sum(0)  # (N, C)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        record = _RECORD.get()
        if record is not None:
            group = self.data_group if self.training else None
            record.append(Routing(logits, counts.detach(), dropped.detach(), group))
        return out.reshape(shape)


def make_feed_forward(config: ModelConfig, index: int) -> nn.Module:
    """Block `index`'s feed-forward: the routed experts where config.is_moe_layer(index), else the MLP."""
    return MoE(config) if config.is_moe_layer(index) else MLP(config)
