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
each MoE layer appends a `Routing`. `router_outputs` turns them into the load-balancing loss (Switch
Transformer eq. 4, computed as transformers' `load_balancing_loss_func`), the router z-loss (ST-MoE)
and the per-expert counts a run logs.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.model.config import ModelConfig
from plmkit.model.dropout import Dropout
from plmkit.model.layers import MLP, activation_fn


# ---- what each layer's routing leaves behind ---------------------------------------------------------
@dataclass
class Routing:
    """One MoE layer's routing of one forward."""

    logits: torch.Tensor  # (N, E) router logits
    counts: torch.Tensor  # (E,) assignments each expert was given (before any capacity drop)
    dropped: torch.Tensor  # () assignments dropped for capacity (0 when dropless)


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

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (S, C) sorted by expert, counts (E,) rows per expert -> (S, C)."""
        h = grouped_linear(x, self.fc_in, counts, self.fc_in_bias)  # (S, W)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return grouped_linear(self.dropout(h), self.fc_out, counts, self.fc_out_bias)  # (S, C)


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
        h = self.experts(x[order % n], kept_counts)  # (S', C)
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
            record.append(Routing(logits, counts.detach(), dropped.detach()))
        return out.reshape(shape)


def make_feed_forward(config: ModelConfig, index: int) -> nn.Module:
    """Block `index`'s feed-forward: the routed experts where config.is_moe_layer(index), else the MLP."""
    return MoE(config) if config.is_moe_layer(index) else MLP(config)


# ---- the router losses -------------------------------------------------------------------------------
def load_balancing_loss(
    router_logits: Sequence[torch.Tensor],
    n_experts: int,
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Switch Transformer's auxiliary loss over the layers' router logits (each (N, E)), pooled the way
    transformers' `load_balancing_loss_func` pools them:  E · sum_e f_e · P_e, where f_e is the share of
    top-k assignments that went to expert e and P_e the mean router probability of e, both over all
    layers' tokens (pads excluded with a 2D attention_mask (B, T) matching each layer's N = B·T rows).
    1 when perfectly balanced at top_k = 1 (top_k at top-k: f sums to k). Gradients flow through P."""
    device = router_logits[0].device
    assigned = torch.zeros(n_experts, dtype=torch.float32, device=device)
    probability = torch.zeros(n_experts, dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    keep = None if attention_mask is None else attention_mask.reshape(-1).to(device, torch.float32)
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        top = probs.topk(top_k, dim=-1).indices  # (N, k)
        w = keep if keep is not None else probs.new_ones(probs.shape[0])  # (N,)
        assigned = assigned.index_add(0, top.reshape(-1), w.repeat_interleave(top_k))
        probability = probability + (probs * w[:, None]).sum(0)
        rows = rows + w.sum()
    return n_experts * ((assigned / rows) * (probability / rows)).sum()


def router_z_loss(router_logits: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None):
    """ST-MoE's router z-loss: the mean over every layer's tokens of logsumexp(logits)² (keeps the
    router logits small, so the softmax stays stable in low precision)."""
    keep = None if attention_mask is None else attention_mask.reshape(-1).to(torch.float32)
    total = router_logits[0].new_zeros((), dtype=torch.float32)
    rows = router_logits[0].new_zeros((), dtype=torch.float32)
    for logits in router_logits:
        z = torch.logsumexp(logits.float(), dim=-1).pow(2)  # (N,)
        w = keep.to(z.device) if keep is not None else torch.ones_like(z)
        total = total + (z * w).sum()
        rows = rows + w.sum()
    return total / rows


@dataclass
class RouterOutput:
    """The router side of a model's output (fields of plmkit.model.pretrained.ModelOutput)."""

    router_logits: tuple[torch.Tensor, ...]  # per MoE layer (N, E)
    aux_loss: torch.Tensor  # load-balancing loss (unweighted)
    z_loss: torch.Tensor  # router z-loss (unweighted)
    expert_counts: torch.Tensor  # (L, E) assignments per expert and MoE layer
    dropped: torch.Tensor  # (L,) assignments dropped for capacity


def router_outputs(
    routings: list[Routing], config: ModelConfig, attention_mask: torch.Tensor | None = None
) -> RouterOutput | None:
    """The losses and counts of one forward's routings (None when no MoE layer ran). A 2D attention_mask
    (B, T) leaves pads out of the losses when every layer routed B·T rows."""
    if not routings:
        return None
    logits = tuple(r.logits for r in routings)
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if mask is not None and any(lg.shape[0] != mask.numel() for lg in logits):
        mask = None  # (an encoder-decoder's layers route different rows)
    return RouterOutput(
        router_logits=logits,
        aux_loss=load_balancing_loss(logits, config.n_experts, config.top_k, mask),
        z_loss=router_z_loss(logits, mask),
        expert_counts=torch.stack([r.counts for r in routings]),
        dropped=torch.stack([r.dropped for r in routings]),
    )


def router_penalty(router: RouterOutput, config: ModelConfig) -> torch.Tensor:
    """What training adds to the loss per target: coef_aux · load-balancing + coef_z · z-loss."""
    return config.router_aux_loss_coef * router.aux_loss + config.router_z_loss_coef * router.z_loss


def load_cv(counts: torch.Tensor) -> float:
    """The load-balance coefficient of variation: std / mean of the per-expert counts of each layer
    ((L, E) or (E,)), averaged over the layers. 0 = perfectly balanced."""
    counts = counts.float().reshape(-1, counts.shape[-1])
    mean = counts.mean(dim=-1).clamp(min=1e-9)
    return float((counts.std(dim=-1, unbiased=False) / mean).mean())


class RouterTally:
    """The router side of a run's training forwards, summed between two logs (read from the outputs
    the step computes anyway: no second pass). Empty for a model without experts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts: torch.Tensor | None = None  # (L, E) assignments
        self.dropped = 0.0
        self.aux = 0.0
        self.z = 0.0
        self.forwards = 0

    def add(self, out) -> None:
        """One forward's ModelOutput (its expert_counts, dropped, aux_loss, z_loss when it routed)."""
        if getattr(out, "expert_counts", None) is None:
            return
        counts = out.expert_counts.detach().to("cpu", torch.float64)
        self.counts = counts if self.counts is None else self.counts + counts
        self.dropped += float(out.dropped.sum())
        self.aux += float(out.aux_loss.detach())
        self.z += float(out.z_loss.detach())
        self.forwards += 1

    def metrics(self, sum_over_ranks=None) -> dict[str, float | list[float]]:
        """moe_tokens_per_expert (assignments per expert over every MoE layer), moe_load_cv (`load_cv`),
        moe_dropped and its fraction of the assignments, the mean moe_aux_loss and moe_z_loss per
        forward; summed over the data-parallel ranks by `sum_over_ranks(*floats)` (every rank calls it)."""
        if self.counts is None:
            return {}
        values = [*self.counts.flatten().tolist(), self.dropped, self.aux, self.z, float(self.forwards)]
        if sum_over_ranks is not None:
            values = list(sum_over_ranks(*values))
        n = self.counts.numel()
        counts = torch.tensor(values[:n], dtype=torch.float64).view_as(self.counts)
        dropped, aux, z, forwards = values[n:]
        return {
            "moe_tokens_per_expert": [int(c) for c in counts.sum(0).tolist()],
            "moe_load_cv": load_cv(counts),
            "moe_dropped": int(dropped),
            "moe_dropped_fraction": dropped / max(float(counts.sum()), 1.0),
            "moe_aux_loss": aux / max(forwards, 1.0),
            "moe_z_loss": z / max(forwards, 1.0),
        }
