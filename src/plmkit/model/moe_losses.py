"""The router side of a mixture of experts (plmkit.model.moe): its losses and the counts a run logs.

    load_balancing_loss   Switch Transformer eq. 4 over all MoE layers, as transformers'
                          `load_balancing_loss_func` computes it (pads left out)
    router_z_loss         ST-MoE's mean squared logsumexp of the router logits
    router_outputs        both, from one forward's routings, and what training adds to its loss

On several data-parallel ranks (a Routing's `group`, set by plmkit.model.expert_parallel.share_routing),
training computes the losses of the whole micro-batch, not of each rank's rows: one all-reduce gives the
global expert counts, probability sums, rows and targets. The load-balancing loss is linear in each
rank's probability sum once the counts are global, so each rank adds its share (with its gradient) and
the shares add up to the one-process loss exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plmkit.model.config import ModelConfig
from plmkit.model.moe import Routing


@dataclass
class _Sums:
    """Router statistics of a forward, pooled over its MoE layers."""

    assigned: torch.Tensor  # (E,) top-k assignments per expert (no gradient)
    probability: torch.Tensor  # (E,) summed router probabilities per expert
    rows: torch.Tensor  # () rows (tokens) counted
    z: torch.Tensor  # () summed logsumexp(logits)²


def _sums(
    router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int, mask: torch.Tensor | None
) -> _Sums:
    device = router_logits[0].device
    keep = None if mask is None else mask.reshape(-1).to(device, torch.float32)
    assigned = torch.zeros(n_experts, dtype=torch.float32, device=device)
    probability = torch.zeros(n_experts, dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    z = torch.zeros((), dtype=torch.float32, device=device)
    for logits in router_logits:
        logits = logits.float()
        probs = torch.softmax(logits, dim=-1)  # (N, E)
        top = probs.topk(top_k, dim=-1).indices  # (N, k)
        w = keep if keep is not None else probs.new_ones(probs.shape[0])  # (N,)
        assigned = assigned.index_add(0, top.reshape(-1), w.repeat_interleave(top_k))
        probability = probability + (probs * w[:, None]).sum(0)
        rows = rows + w.sum()
        z = z + (torch.logsumexp(logits, dim=-1).pow(2) * w).sum()
    return _Sums(assigned.detach(), probability, rows, z)


def _balance(assigned: torch.Tensor, probability: torch.Tensor, rows: torch.Tensor, n_experts: int):
    return n_experts * ((assigned / rows) * (probability / rows)).sum()


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
    s = _sums(router_logits, n_experts, top_k, attention_mask)
    return _balance(s.assigned, s.probability, s.rows, n_experts)


def router_z_loss(router_logits: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None):
    """ST-MoE's router z-loss: the mean over every layer's tokens of logsumexp(logits)² (keeps the
    router logits small, so the softmax stays stable in low precision)."""
    s = _sums(router_logits, router_logits[0].shape[-1], 1, attention_mask)
    return s.z / s.rows


@dataclass
class RouterOutput:
    """The router side of a model's output (its first five fields are ModelOutput's)."""

    router_logits: tuple[torch.Tensor, ...]  # per MoE layer (N, E)
    aux_loss: torch.Tensor  # load-balancing loss (unweighted)
    z_loss: torch.Tensor  # router z-loss (unweighted)
    expert_counts: torch.Tensor  # (L, E) assignments per expert and MoE layer (this rank's rows)
    dropped: torch.Tensor  # (L,) assignments dropped for capacity (this rank's rows)
    penalty: torch.Tensor  # what training adds per target: coef_aux · aux + coef_z · z (this rank's share)
    weight: (
        torch.Tensor | None
    )  # the targets the penalty multiplies: this forward's (all ranks' with a group)


def router_outputs(
    routings: list[Routing],
    config: ModelConfig,
    attention_mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> RouterOutput | None:
    """The losses and counts of one forward's routings (None when no MoE layer ran). A 2D attention_mask
    (B, T) leaves pads out of the losses when every layer routed B·T rows. `targets`: the forward's label
    count, which the penalty multiplies on the (sum, count) contract."""
    if not routings:
        return None
    logits = tuple(r.logits for r in routings)
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    if mask is not None and any(lg.shape[0] != mask.numel() for lg in logits):
        mask = None  # (an encoder-decoder's layers route different rows)
    e = config.n_experts
    s = _sums(logits, e, config.top_k, mask)
    aux = _balance(s.assigned, s.probability, s.rows, e)
    z = s.z / s.rows
    penalty = config.router_aux_loss_coef * aux + config.router_z_loss_coef * z
    weight = targets
    group = routings[0].group
    if group is not None:  # the whole micro-batch's losses; this rank adds its share
        import torch.distributed as dist

        count = torch.zeros((), device=s.rows.device) if targets is None else targets.float().reshape(())
        stats = torch.cat([s.assigned, s.probability.detach(), torch.stack([s.rows, s.z.detach(), count])])
        dist.all_reduce(stats, group=group)
        assigned, probability, (rows, z_sum, weight) = stats[:e], stats[e : 2 * e], stats[2 * e :]
        aux_share = _balance(assigned, s.probability, rows, e)  # linear in this rank's probabilities
        z_share = s.z / rows
        penalty = config.router_aux_loss_coef * aux_share + config.router_z_loss_coef * z_share
        # reported: the micro-batch's values (every rank the same), with this rank's share's gradient
        aux = aux_share + (_balance(assigned, probability, rows, e) - aux_share).detach()
        z = z_share + (z_sum / rows - z_share).detach()
    return RouterOutput(
        router_logits=logits,
        aux_loss=aux,
        z_loss=z,
        expert_counts=torch.stack([r.counts for r in routings]),
        dropped=torch.stack([r.dropped for r in routings]),
        penalty=penalty,
        weight=weight,
    )


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
