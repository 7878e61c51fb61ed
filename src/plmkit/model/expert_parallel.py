"""Training a mixture of experts on several ranks: expert parallelism and whole-batch router losses.

    share_routing(model, expert_parallel=E)   # every rank, after the model is built, before training

Data parallel: each rank routes its own rows; the router losses cover the whole micro-batch (the MoE
layers' `data_group`: one all-reduce per forward, plmkit.model.moe_losses), so N ranks compute the
losses of one process.

Expert parallel (E > 1): the ranks form groups of E consecutive ranks, and rank r of a group computes
experts r·n/E .. (r+1)·n/E - 1 for the whole group. After routing, each rank's rows, already grouped by
expert, go to the ranks that own their experts in one all-to-all (the counts first, in another), are
computed there as one grouped product, and come back in a second all-to-all; autograd runs the same
exchanges backwards. The expert weights stay replicated on every rank (what a rank does not own gets a
zero gradient here and the owner's through the data-parallel average), so the computation is divided,
not the memory (under FSDP2 the weights are sharded at rest and gathered per block as usual). Evaluation and decoding compute every expert locally, without collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError


@dataclass
class ExpertGroup:
    """The ranks that split the experts of a MoE layer between them."""

    group: Any  # their process group
    size: int  # E: how many ranks
    rank: int  # this rank's place in the group


def dispatch(
    rows: torch.Tensor,
    counts: torch.Tensor,
    ep: ExpertGroup,
    compute: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:
    """rows (S, C) grouped by expert with counts (n,) -> the experts' outputs (S, C), each expert computed
    on its owner rank: `compute(rows, counts, first)` runs experts first .. first + n/E - 1."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_to_all_single

    local = counts.numel() // ep.size
    send = counts.view(ep.size, local).contiguous()  # (E ranks, local experts): rows for each rank's experts
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=ep.group)  # (source rank, my expert): rows I will receive
    send_sizes, recv_sizes = send.sum(1).tolist(), recv.sum(1).tolist()
    got = all_to_all_single(
        rows.new_empty(sum(recv_sizes), rows.shape[-1]), rows, recv_sizes, send_sizes, group=ep.group
    )  # (R, C) by source rank, then by my expert
    expert_of_row = torch.arange(local, device=rows.device).repeat(ep.size).repeat_interleave(recv.flatten())
    order = torch.argsort(expert_of_row, stable=True)  # grouped by my expert
    h = compute(got[order], recv.sum(0), ep.rank * local)  # (R, C)
    back = torch.empty_like(h).index_copy(0, order, h)  # by source rank again
    return all_to_all_single(rows.new_empty(rows.shape), back, send_sizes, recv_sizes, group=ep.group)


def moe_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "expert_group") and hasattr(m, "data_group")]


def share_routing(model: nn.Module, expert_parallel: int = 1) -> None:
    """Set up the MoE layers of `model` for training on the ranks of the default process group (every
    rank calls it, in the same order). Nothing to do in one process or for a model without experts."""
    import torch.distributed as dist

    layers = moe_layers(model)
    if expert_parallel > 1 and not layers:
        raise ConfigError(f"distributed.expert_parallel={expert_parallel}, but the model has no experts")
    if not layers or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    ep = None
    if expert_parallel > 1:
        n_experts = layers[0].n_experts
        if n_experts % expert_parallel or world % expert_parallel:
            raise ConfigError(
                f"distributed.expert_parallel={expert_parallel} must divide the model's {n_experts} experts "
                f"and the {world} processes"
            )
        groups = [
            dist.new_group(list(range(s, s + expert_parallel))) for s in range(0, world, expert_parallel)
        ]
        ep = ExpertGroup(groups[rank // expert_parallel], expert_parallel, rank % expert_parallel)
    for layer in layers:
        layer.data_group = dist.group.WORLD
        layer.expert_group = ep
