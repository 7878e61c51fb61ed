"""Tensor parallelism (Megatron-style, on PyTorch DTensor) for single-stack models, and TP x FSDP2 (2D).

    mesh = init_device_mesh("cuda", (tp,), mesh_dim_names=("tp",))
    model = apply_tensor_parallel(build_model("llama-tiny"), mesh)       # every rank, same weights
    ...train...
    save_tensor_parallel_checkpoint(model, tokenizer, "out/")           # every rank; rank 0 writes

    mesh = init_device_mesh("cuda", (dp, tp), mesh_dim_names=("dp", "tp"))
    model = apply_fsdp_tensor_parallel(model, mesh)                     # TP in a node, FSDP2 across

Per block, the attention's fused q|k|v projection and the MLP's input projection are split by output
rows (`ColwiseParallel`: each rank computes its own heads / hidden units, no communication), the
attention output and MLP output projections by input columns (`RowwiseParallel`: each rank multiplies
its slice, one all-reduce sums the partial results, the bias is added once). Embeddings, norms and the
LM head stay replicated. Each block therefore costs one all-reduce per sublayer forward and backward.

The fused weights need care: `attn.qkv` stacks all q heads, then all k heads, then all v heads, and a
gated MLP's `fc_in` stacks gate then up. A plain split of the rows would give rank 0 all of q and part
of k. So before sharding the rows are reordered rank-major ([q_0 k_0 v_0 | q_1 k_1 v_1 | ...], and
[gate_0 up_0 | gate_1 up_1 | ...]): rank r's contiguous shard then holds exactly its q heads, their kv
heads and their v heads, and the model code runs unchanged on the local head counts (n_head / tp,
n_kv_head / tp). `full_state_dict` undoes the reordering, so what comes out is the ordinary layout.

In a recipe, `distributed.strategy: fsdp` with `distributed.tensor_parallel: T` does the 2-D version
(plmkit.train.distributed.fsdp), launched with `plm pretrain RECIPE --nproc N` (N a multiple of T).

Gradient checkpointing combines with it (the recomputed blocks repeat their collectives). Checkpoints:
`plmkit.io.save` refuses a sharded model; `save_tensor_parallel_checkpoint` gathers the full weights to
rank 0 and writes a normal checkpoint. To resume into a TP model, load it plainly and apply TP again.
A recipe's sharded (DCP) checkpoints keep the rows in T's rank-major order; `reorder_fused_rows` moves
them (and their optimizer state) for another T on resume, or for none on conversion.

Dropout: the replicated activations draw the same mask on every rank only while the ranks' RNGs agree,
so with dropout > 0 apply_tensor_parallel checks that they do (seed every rank alike; keep the data
order's randomness in its own generator). Attention dropout then gives each rank's heads the same mask
pattern, which differs from a single process's draw (the parallel tests run with dropout 0). Rotary positions, GQA/MQA (tp must divide n_kv_head), SwiGLU,
learned/sinusoidal positions and biases all work; T5's relative position bias (per-head table) does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.model.config import ModelConfig

# the projections of one Block, and how they are split
COLWISE = ("attn.qkv", "mlp.fc_in")  # output rows sharded: local heads / hidden units
ROWWISE = ("attn.out", "mlp.fc_out")  # input columns sharded: partial sums all-reduced


@dataclass
class TensorParallelInfo:
    """What apply_tensor_parallel did to a model (kept on it as `model.tensor_parallel`)."""

    size: int
    row_orders: dict[
        str, torch.Tensor
    ]  # fused Linear name -> row order used for sharding (full layout -> sharded)


def check_tensor_parallel(config: ModelConfig, tp: int) -> None:
    """Raise ConfigError unless a model with `config` can be split over `tp` ranks (no mesh needed, so a
    trainer can check a recipe before starting processes)."""
    if tp < 1:
        raise ConfigError(f"tensor-parallel size must be >= 1, got {tp}")
    if config.family == "seq2seq":
        raise ConfigError(
            "tensor parallelism supports single-stack models (causal, prefix, masked); "
            "model.family=seq2seq has cross-attention, which it does not split: use FSDP alone"
        )
    if config.position == "relative":
        raise ConfigError(
            "tensor parallelism does not split T5's relative position bias (a table per head); "
            "use model.position=rotary/learned/sinusoidal, or FSDP alone"
        )
    if config.n_experts is not None:
        raise ConfigError(
            f"tensor parallelism splits dense MLPs, not model.n_experts={config.n_experts} routed experts; "
            "use FSDP alone (distributed.tensor_parallel=1)"
        )
    kv = config.kv_heads
    checks = [
        ("model.n_head", config.n_head, "each rank computes whole attention heads"),
        (
            "model.n_kv_head" if config.n_kv_head else "model.n_head (= kv heads)",
            kv,
            "grouped-query attention needs each rank to hold whole kv heads",
        ),
        ("model.d_ff", config.d_ff, "each rank holds d_ff / tp hidden units"),
    ]
    for key, value, why in checks:
        if value % tp:
            fits = [
                d
                for d in range(1, value + 1)
                if config.n_head % d == 0 and kv % d == 0 and config.d_ff % d == 0
            ]
            raise ConfigError(
                f"{key}={value} is not divisible by the tensor-parallel size {tp} ({why}); "
                f"choose a tensor-parallel size in {fits}"
            )


def check_tensor_parallel_layout(tp: int, world_size: int, strategy: str) -> None:
    """distributed.tensor_parallel fits the strategy and the number of processes (checked by every rank
    before any waits on another, and by `--nproc` before it starts them)."""
    key = f"distributed.tensor_parallel={tp}"
    if tp == 1:
        return
    if tp < 1:
        raise ConfigError(
            f"{key}: give the number of ranks that split each block, a whole number >= 1 (1: none)"
        )
    if strategy != "fsdp":
        raise ConfigError(
            f"{key} needs distributed.strategy=fsdp (tensor parallelism inside each group of {tp} "
            f"ranks, FSDP across the groups), not {strategy}; set distributed.strategy=fsdp"
        )
    if world_size % tp:
        raise ConfigError(
            f"{key} does not divide the {world_size} process(es): start a multiple of {tp} "
            f"(--nproc {tp} for tensor parallelism alone, --nproc {2 * tp} for 2 data-parallel "
            f"groups), or set distributed.tensor_parallel to a divisor of {world_size}"
        )


def fused_row_segments(config: ModelConfig) -> dict[str, list[int]]:
    """The row segments of each fused projection of a Block: q | k | v, and gate | up for a gated MLP."""
    q_width, kv_width = config.n_head * config.dim_per_head, config.kv_heads * config.dim_per_head
    return {
        "attn.qkv": [q_width, kv_width, kv_width],
        "mlp.fc_in": [config.d_ff, config.d_ff] if config.gated_mlp else [config.d_ff],
    }


def _rank_major_order(segments: list[int], tp: int) -> torch.Tensor:
    """Row order that turns [seg_0 | seg_1 | ...] into [seg_0[r] seg_1[r] ... for each rank r], where
    seg[r] is the r-th of tp equal parts of a segment. (n_rows,) long tensor."""
    starts = [sum(segments[:i]) for i in range(len(segments))]
    rows = []
    for r in range(tp):
        for start, size in zip(starts, segments):
            part = size // tp
            rows.append(torch.arange(start + r * part, start + (r + 1) * part))
    return torch.cat(rows)


def _check_same_rng(model: nn.Module, tp_mesh) -> None:
    """Dropout on the replicated activations (embeddings, residual stream) must draw the same mask on
    every rank of a tp group, or their copies drift apart: their torch RNG states must agree."""
    import torch.distributed as dist

    device = next(model.parameters()).device
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    digest = hashlib.sha256(state.cpu().numpy().tobytes()).hexdigest()
    digests: list[str | None] = [None] * tp_mesh.size()
    dist.all_gather_object(digests, digest, group=tp_mesh.get_group())
    if len(set(digests)) > 1:
        config = model.config
        raise ConfigError(
            f"model.dropout={config.dropout} / model.attention_dropout={config.attention_dropout} "
            "with tensor parallelism needs the same torch RNG state on every rank of a tensor-"
            "parallel group, but the ranks differ: call torch.manual_seed with one seed on all "
            "ranks (seed data order separately), or set the dropouts to 0"
        )


def _stack(model: nn.Module) -> nn.Module:
    from plmkit.model.stack import Stack

    stack = getattr(model, "transformer", None)
    if not isinstance(stack, Stack) or not hasattr(model, "config"):
        raise ConfigError(
            f"tensor parallelism needs a plmkit single-stack model (CausalLM, PrefixLM, MaskedLM or "
            f"a task head), got {type(model).__name__}; apply it before wrapping the model"
        )
    return stack


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> nn.Module:
    """Split every block's attention and MLP projections over the ranks of the 1-D `tp_mesh` (in place;
    returns the model). Every rank must call it with a model holding the same weights (rank 0's are
    used). Apply it before FSDP, PEFT wrappers or torch.compile, after loading a checkpoint.
    The forward then takes and returns ordinary (replicated) tensors; parameters of the four
    projections become DTensors."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if getattr(model, "tensor_parallel", None) is not None:
        raise ConfigError("the model is already tensor-parallel; apply_tensor_parallel once per model")
    if tp_mesh.ndim != 1:
        raise ConfigError(
            f"apply_tensor_parallel needs a 1-D mesh (the tp dimension), got {tp_mesh.ndim} "
            "dimensions; pass mesh['tp'] of a 2-D mesh, or use apply_fsdp_tensor_parallel"
        )
    stack = _stack(model)
    config: ModelConfig = model.config
    tp = tp_mesh.size()
    check_tensor_parallel(config, tp)
    fused_rows = fused_row_segments(config)
    prefix = next(name for name, module in model.named_modules() if module is stack)
    row_orders: dict[str, torch.Tensor] = {}
    plan = {**{name: ColwiseParallel() for name in COLWISE}, **{name: RowwiseParallel() for name in ROWWISE}}
    # named_children: the blocks' indices in the whole stack (a pipeline stage holds some of them)
    for i, block in stack.blocks.named_children():  # check everything before changing anything
        for name in COLWISE + ROWWISE:
            layer = block.get_submodule(name)
            if type(layer) is not nn.Linear:  # LoRA / quantized layers would be split wrongly
                raise ConfigError(
                    f"{prefix}.blocks.{i}.{name} is a {type(layer).__name__}, not nn.Linear: "
                    "tensor parallelism splits plain projections only, not PEFT or quantized "
                    "layers; use FSDP for those"
                )
    if tp > 1 and (config.dropout > 0 or config.attention_dropout > 0):
        _check_same_rng(model, tp_mesh)
    for i, block in stack.blocks.named_children():
        if tp > 1:
            for name, segments in fused_rows.items():
                if len(segments) == 1:  # one segment: rank-major order is the identity
                    continue
                layer = block.get_submodule(name)
                order = _rank_major_order(segments, tp).to(layer.weight.device)
                with torch.no_grad():  # reorder rows so that rank r's contiguous shard is its own part
                    layer.weight.copy_(layer.weight[order])
                    if layer.bias is not None:
                        layer.bias.copy_(layer.bias[order])
                row_orders[f"{prefix}.blocks.{i}.{name}"] = order.cpu()
        parallelize_module(block, tp_mesh, plan)
        block.attn.n_head //= tp  # the attention now sees only its local heads
        block.attn.n_kv_head //= tp
    model.tensor_parallel = TensorParallelInfo(size=tp, row_orders=row_orders)
    return model


def apply_fsdp_tensor_parallel(
    model: nn.Module, mesh, *, reshard_after_forward: bool = True, mp_policy: Any | None = None
) -> nn.Module:
    """2-D parallelism on a (dp, tp) DeviceMesh: tensor parallelism on mesh["tp"] (within a node, where
    the per-sublayer all-reduces are cheap), then FSDP2 `fully_shard` of each block and of the root on
    mesh["dp"] (across nodes). Each dp group must get its own slice of the batch; the ranks of one tp
    group get the same batch. `mp_policy` is an FSDP2 MixedPrecisionPolicy."""
    from torch.distributed.fsdp import fully_shard

    names = mesh.mesh_dim_names or ()
    if mesh.ndim != 2 or "dp" not in names or "tp" not in names:
        raise ConfigError(
            f"apply_fsdp_tensor_parallel needs a 2-D mesh with dimensions named 'dp' and 'tp', "
            f"got {mesh.ndim}-D {names}; build it with init_device_mesh(device, (dp, tp), "
            "mesh_dim_names=('dp', 'tp'))"
        )
    apply_tensor_parallel(model, mesh["tp"])
    options: dict[str, Any] = {"mesh": mesh["dp"], "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        options["mp_policy"] = mp_policy
    for block in _stack(model).blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)  # embeddings, final norm, head (and tied weights) in the root group
    return model


def unshard(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The ordinary full tensor (on CPU) for the parameter `name` of a tensor-parallel model, given its
    (possibly sharded) value or gradient: DTensors are gathered, fused rows put back in their usual order.
    A collective for DTensors: every rank must call it, in the same order."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()  # all-gather over every mesh dimension it is sharded on
    tensor = tensor.detach().cpu()
    info: TensorParallelInfo | None = getattr(model, "tensor_parallel", None)
    module, _, leaf = name.rpartition(".")
    if info is not None and module in info.row_orders and leaf in ("weight", "bias"):
        restored = torch.empty_like(tensor)
        restored[info.row_orders[module]] = tensor  # sharded row k came from full row order[k]
        tensor = restored
    return tensor


def reorder_fused_rows(model: nn.Module, optimizer: torch.optim.Optimizer | None, written: int) -> None:
    """Move the fused rows (q|k|v, gate|up) of weights loaded from a checkpoint of a run with tensor-parallel
    size `written` to where this model (tensor-parallel or not; sharded or not) expects them, with their
    optimizer state (Adam's moments). Each size stores the rows in its own rank-major order, a pure
    function of the config and the size: loading size-2 rows into a size-4 or unsplit model as they are
    would silently scramble the heads. A collective for sharded models: every rank calls it."""
    from plmkit.weights import unwrap

    plain = unwrap(model)
    info: TensorParallelInfo | None = getattr(plain, "tensor_parallel", None)
    tp = info.size if info is not None else 1
    if written == tp:
        return
    check_tensor_parallel(plain.config, written)  # the checkpoint's size must have been able to split it
    state = optimizer.state if optimizer is not None else {}
    for name, segments in fused_row_segments(plain.config).items():
        # the checkpoint's row j held full row stored[j]; this model's row k holds full row wanted[k]
        stored, wanted = _rank_major_order(segments, written), _rank_major_order(segments, tp)
        rows = torch.argsort(stored)[wanted]  # this model's row k = the checkpoint's row rows[k]
        if torch.equal(rows, torch.arange(len(rows))):  # one segment: every size stores it as it is
            continue
        for block in _stack(plain).blocks:
            layer = block.get_submodule(name)
            for param in (layer.weight, layer.bias):
                if param is None:
                    continue
                moments = [v for v in state.get(param, {}).values() if torch.is_tensor(v) and v.dim()]
                if any(
                    v.shape != param.shape for v in moments
                ):  # e.g. a block-quantized state: no rows to move
                    raise ConfigError(
                        f"the optimizer keeps state of another shape than {name}'s {list(param.shape)}, "
                        "which cannot be moved to another tensor-parallel size; resume with "
                        f"distributed.tensor_parallel={written}, or plm convert --from-sharded the "
                        "checkpoint and start a new run with init_from"
                    )
                for tensor in (param, *moments):
                    _take_rows(tensor, rows)


@torch.no_grad()
def _take_rows(tensor: torch.Tensor, rows: torch.Tensor) -> None:
    """tensor[:] = tensor[rows], in place; a DTensor (any placements) is gathered whole, reordered and each
    rank keeps its shard of the result (one full tensor in memory at a time)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(tensor, DTensor):
        tensor.copy_(tensor[rows.to(tensor.device)])
        return
    full = tensor.full_tensor()
    moved = distribute_tensor(
        full[rows.to(full.device)], tensor.device_mesh, tensor.placements, src_data_rank=None
    )
    tensor.to_local().copy_(moved.to_local())  # src_data_rank=None: each rank slices its own shard


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The ordinary, unsharded state dict of a tensor-parallel (and/or FSDP2) model, on CPU. A collective:
    every rank must call it. With rank0_only the other ranks take part in the gathers but keep nothing
    (they return {}), so only one copy of the model is held per job. A plain model gives its state dict."""
    import torch.distributed as dist

    keep = not rank0_only or not dist.is_initialized() or dist.get_rank() == 0
    state = {}
    for name, tensor in model.state_dict().items():
        full = unshard(model, name, tensor)
        if keep:
            state[name] = full
    return state


def unsharded_copy(model: nn.Module, rank0_only: bool = False) -> nn.Module | None:
    """A plain (single-process, CPU) model of the same class, config and weights. A collective; with
    rank0_only, only global rank 0 builds it and the others get None."""
    from plmkit.model.registry import init_kwargs, model_classes

    state = full_state_dict(model, rank0_only)
    if not state:
        return None
    known = set(model_classes().values())  # fully_shard swaps in a subclass (FSDPCausalLM): find ours
    cls = next((c for c in type(model).__mro__ if c in known), type(model))
    copy = cls(model.config, **init_kwargs(model))
    copy.load_state_dict(state)
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())  # a bf16 model stays bf16
    return copy.to(dtype).train(model.training)


def save_tensor_parallel_checkpoint(
    model: nn.Module, tokenizer: Any | None, directory: str | Path
) -> Path | None:
    """Write a normal plmkit checkpoint (plmkit.io.save: atomic, loadable by plmkit.io.load without any
    process group) from a tensor-parallel model. Every rank calls it (the gather is collective); global
    rank 0 writes and gets the path, the others get None."""
    import torch.distributed as dist

    from plmkit.io import save

    copy = unsharded_copy(model, rank0_only=True)
    path = save(copy, tokenizer, directory) if copy is not None else None
    if dist.is_initialized():
        dist.barrier()  # nobody reads the folder before it exists
    return path
