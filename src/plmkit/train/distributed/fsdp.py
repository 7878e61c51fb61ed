"""FSDP2: the model sharded over the ranks with `torch.distributed.fsdp.fully_shard`.

Each transformer Block is one FSDP unit (its parameters are all-gathered just before its forward and
backward and freed after), the root holds the rest (embeddings, final norm, head). Gradients are
reduce-scattered, so every rank keeps only its shard of parameters, gradients and optimizer state.

- mixed precision: with train.precision bf16 (or fp16), parameters are gathered in that dtype and
  gradients reduced in fp32 (`MixedPrecisionPolicy`); the forward still runs under autocast, so norms,
  softmax and the loss stay in fp32 as in one process.
- `fsdp.cpu_offload`: sharded parameters, gradients and the optimizer step live on the CPU
  (`CPUOffloadPolicy`); meant for CUDA runs whose model does not fit otherwise.
- gradient accumulation: `set_requires_gradient_sync(False)` on all but the last micro-batch (FSDP2's
  `no_sync`).
- checkpoints: `torch.distributed.checkpoint` writes every rank's shards of the model and optimizer into
  `dcp/` (get_state_dict / set_state_dict). DCP reshards on load, so a checkpoint written by N processes
  resumes on M; `plm convert --from-sharded` turns it into one model.safetensors.
- tensor parallelism (`distributed.tensor_parallel: T`, 2-D): the ranks form a (dp, tp) mesh of
  world_size / T data-parallel groups of T consecutive ranks. Each block is split over its group's tp
  ranks (plmkit.train.distributed.tensor_parallel: attention heads and MLP units), then FSDP2 shards every unit over
  the dp dimension only; the ranks of one group train on the same rows (`data_rank`). Gradient clipping
  sums each parameter's shard norms over the ranks that hold distinct pieces (`clip_grad_norm`: the
  parameters live on two meshes, which torch's clip_grad_norm_ cannot stack). The checkpoint records T
  (trainer_state.json), because the fused q|k|v and gate|up rows are stored in T's rank-major order:
  a resume with another T (or none) and the conversion move them back where the new layout wants them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plmkit.errors import ConfigError
from plmkit.io import checkpoint_header
from plmkit.train.config import FSDPConfig, OptimConfig
from plmkit.train.distributed.base import LAYOUT_DCP
from plmkit.train.distributed.dcp import FLAT_OPTIMIZER, load_sharded_state, save_sharded_state
from plmkit.train.distributed.process_group import ProcessGroupStrategy
from plmkit.train.distributed.world import World
from plmkit.weights import DCP_FOLDER

if TYPE_CHECKING:
    from plmkit.train.state import TrainState


def check_fsdp_config(precision: str, optim: OptimConfig) -> None:
    """`precision`: the resolved train.precision."""
    if precision == "fp16":
        raise ConfigError(
            "distributed.strategy=fsdp with train.precision=fp16: fp16 needs a gradient scaler that agrees over "
            "the shards, which plmkit does not have; use train.precision=bf16 (or fp32, or strategy ddp/deepspeed)"
        )
    if optim.name == "adamw8bit":  # its kernels take plain tensors: the step fails on DTensor shards
        raise ConfigError(
            "distributed.strategy=fsdp with optim.name=adamw8bit: bitsandbytes' 8-bit AdamW cannot step FSDP's "
            "sharded (DTensor) parameters; use optim.name=adamw with fsdp, or strategy ddp for 8-bit AdamW"
        )


def sharded_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that become FSDP units: every transformer Block (of every stack)."""
    from plmkit.model.stack import Block

    return [m for m in model.modules() if isinstance(m, Block)]


class FSDPStrategy(ProcessGroupStrategy):
    name = "fsdp"
    layout = LAYOUT_DCP

    def __init__(
        self,
        world: World | None = None,
        device: torch.device | None = None,
        tensor_parallel: int = 1,
        fsdp: FSDPConfig | None = None,
        precision: str = "fp32",
    ):
        super().__init__(world, device)
        self.tensor_parallel = tensor_parallel  # ranks per data-parallel group (1: FSDP alone)
        self.fsdp = fsdp or FSDPConfig()
        self.precision = (
            precision  # the resolved train.precision: bf16 / fp16 gather parameters in that dtype
        )

    def describe(self) -> str:
        text = super().describe() + f"; FSDP units: {self.units} blocks + the root"
        if self.tensor_parallel > 1:
            text += (
                f"; mesh dp {self.data_parallel_size} x tp {self.tensor_parallel}: each block split over "
                f"{self.tensor_parallel} ranks"
            )
        return text

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh

        self.header = checkpoint_header(model)  # before fully_shard changes the class
        if self.tensor_parallel > 1:  # 2-D: TP inside each group of consecutive ranks, FSDP across the groups
            from plmkit.train.distributed.tensor_parallel import apply_tensor_parallel

            mesh = init_device_mesh(
                self.device.type, (self.data_parallel_size, self.tensor_parallel), mesh_dim_names=("dp", "tp")
            )
            assert mesh["dp"].get_local_rank() == self.data_rank  # the rows local_rows gives this rank
            apply_tensor_parallel(model, mesh["tp"])
            fsdp_mesh = mesh["dp"]
        else:
            fsdp_mesh = init_device_mesh(self.device.type, (self.world_size,))
        return self.shard(model, fsdp_mesh)

    def shard(self, model: torch.nn.Module, mesh) -> torch.nn.Module:
        """FSDP2 over the 1-D `mesh`: every Block one unit, the root (the rest) another."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        options: dict[str, Any] = {
            "mesh": mesh,
            "reshard_after_forward": self.fsdp.reshard_after_forward,
        }
        if self.fsdp.mixed_precision and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.fsdp.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        # A Block also returns its key/value tensors (views, for the KV cache); FSDP2 warns that an in-place
        # op on a returned view would skip its backward hook. plmkit never modifies them in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        units = sharded_units(model)
        for unit in units:
            fully_shard(unit, **options)
        fully_shard(model, **options)
        self.units = len(units)
        return model  # make_optimizer builds on the sharded (DTensor) parameters: state for this shard only

    def accumulating(self, model: torch.nn.Module, last: bool):
        model.set_requires_gradient_sync(last)  # FSDP2's no_sync: keep unsharded gradients until the last
        return super().accumulating(model, last)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> None:
        clip_grad_norm(model.parameters(), max_norm, self.device, self.pipeline_parallel)

    def checkpoint_info(self) -> dict[str, Any]:
        return {
            **super().checkpoint_info(),
            "tensor_parallel": self.tensor_parallel,
            "pipeline_parallel": self.pipeline_parallel,
            "optimizer_state": FLAT_OPTIMIZER,
        }

    # ---- checkpoints: every rank writes its shards into one temporary folder, rank 0 renames it ---------
    def save(
        self,
        run_dir: Path,
        step: int,
        state: TrainState,
        tokenizer: Any,
        info: dict[str, Any],
        keep_last: int,
    ) -> Path:
        model, optimizer = state.models[state.main], state.optimizers[state.main]
        return self.save_sharded(
            run_dir,
            step,
            state,
            tokenizer,
            info,
            keep_last,
            self.header,
            lambda folder: save_sharded_state(model, optimizer, folder / DCP_FOLDER),
        )

    def load(self, checkpoint: Path, state: TrainState, saved: dict[str, Any], info: dict[str, Any]) -> None:
        self.check_layout(checkpoint, info, (LAYOUT_DCP,))
        self.check_one_model(state)
        load_sharded_state(
            state.models[state.main], state.optimizers[state.main], checkpoint / DCP_FOLDER, info
        )
        self.restore(state, saved)


def clip_grad_norm(
    parameters: Iterable[torch.nn.Parameter], max_norm: float, device: torch.device, stages: int = 1
) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm) for gradients that are DTensors on different meshes (with
    tensor parallelism: (dp, tp) for the split projections, dp for the rest), which torch's cannot stack.
    Each rank adds the squares of its local shards, each divided by the number of ranks holding that same
    shard (replicated pieces count once), and one all-reduce sums them. With `stages` pipeline stages the
    ranks of the other stages hold other parameters: the sum covers them all once. Returns the total norm."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate

    grads = [p.grad for p in parameters if p.grad is not None]
    world = dist.get_world_size() // stages  # the ranks of this stage
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for grad in grads:
        if isinstance(grad, DTensor):
            if any(p.is_partial() for p in grad.placements):  # pending sums: finish them first
                grad = grad.redistribute(
                    grad.device_mesh, [Replicate() if p.is_partial() else p for p in grad.placements]
                )
            mesh = grad.device_mesh
            copies = world // mesh.size()  # ranks of this stage outside the mesh hold the same shards
            copies *= math.prod(mesh.size(d) for d, p in enumerate(grad.placements) if p.is_replicate())
            local = grad.to_local()
        else:
            copies, local = world, grad  # the same whole tensor on every rank of this stage
        squares += local.detach().double().square().sum().to(device) / copies
    dist.all_reduce(squares)
    total = squares.sqrt().float()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # torch's formula: no change below max_norm
    scales: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # one copy per device (CPU offload)
    for grad in grads:
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        key = (local.device, local.dtype)
        if key not in scales:
            scales[key] = scale.to(*key)
        local.mul_(scales[key])
    return total
