"""Distributed training: the strategy layer the recipe loop calls, so that it reads the same on one process
or many.

    strategy    the model the loop calls            gradients of the ranks          checkpoint
    single      the model                           -                               model.safetensors + optimizer
    ddp         DistributedDataParallel             all-reduced (no_sync: last      the same files, written by rank 0
                                                    micro-batch only)
    fsdp        fully_shard per Block, then root    reduce-scattered to shards      torch.distributed.checkpoint
                (FSDP2; plmkit.train.distributed.fsdp)          (set_requires_gradient_sync)    shards (dcp/), any world size
    fsdp + tp   blocks split over T ranks (TP),     FSDP over the dp groups; TP     dcp/ as fsdp, with T recorded
                then fully_shard over dp groups     grads are already the group's   (any world size or T on resume)
    fsdp + pp   the model cut into P stages (and    FSDP over the dp groups; the    dcp/ as fsdp, every stage's
    (+ tp)      TP inside each), fully_shard over   pipeline schedule's backward    shards under the whole model's
                dp groups (plmkit.train.distributed.pipeline)                       names (any P, or none, on resume)
    deepspeed   the DeepSpeed engine, ZeRO 1/2/3    the engine                      the engine's files (deepspeed/)
                (plmkit.train.distributed.deepspeed)

`distributed.strategy: auto` (the default) is `single` in one process and `ddp` under torchrun.
Launch several processes with `plm pretrain RECIPE --nproc N` (it starts torchrun itself) or with your own
`torchrun --nproc-per-node N -m plmkit pretrain RECIPE`; gloo on CPU, nccl on CUDA (one GPU per process,
cuda:LOCAL_RANK). ddp / fsdp / deepspeed in a single process without torchrun run as a group of one, so a
recipe's distributed code path can be tried anywhere.

Batch semantics, chosen so that N processes compute exactly what one process computes:
`train.batch_size` is the micro-batch of one data-parallel rank; the global batch is batch_size x
data_parallel_size x accumulation. Every process is its own data-parallel rank (data_rank = rank,
data_parallel_size = world_size) except with tensor parallelism (`distributed.tensor_parallel: T`,
strategy fsdp) and pipeline parallelism (`distributed.pipeline_parallel: P`), where the P x T consecutive
ranks of a group share one model replica, train on the same rows and count as one data-parallel rank
(data_rank = rank // (P T), data_parallel_size = world_size / (P T)).
Every rank draws the same global micro-batch (batch_size x data_parallel_size blocks) from the seeded
sampler, runs the objective (its random masks) on all of it, and trains on its data-parallel rank's rows
(`local_rows`). The sampler and objective states are therefore identical on every rank (rank 0 saves
them; resuming is exact), and each rank knows the step's global target-token count without any
communication, so it weights its mean loss by data_parallel_size * count_rank / count_total: after DDP /
FSDP / DeepSpeed average the gradients over the data-parallel ranks, that is exactly the gradient of the
big batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.files import step_folder_name
from plmkit.train.checkpoint import model_folder, rng_state, save_checkpoint, set_rng_state
from plmkit.train.config import OptimConfig
from plmkit.train.distributed.world import World
from plmkit.train.optim import build_optimizer
from plmkit.train.state import TrainState
from plmkit.weights import DCP_FOLDER, DEEPSPEED_FOLDER, unwrap

# how a checkpoint holds the weights: model.safetensors, or named after the folder of shards
LAYOUT_PLAIN, LAYOUT_DCP, LAYOUT_DEEPSPEED = "plain", DCP_FOLDER, DEEPSPEED_FOLDER


class Strategy:
    """One process, no wrapper: the plain training step. The base class of the distributed strategies,
    which override the parts that differ (each method says what the loop needs from it)."""

    name = "single"
    layout = LAYOUT_PLAIN  # how its checkpoints hold the weights
    tensor_parallel = 1  # ranks that split each block between them and train on the same rows
    pipeline_parallel = 1  # pipeline stages: ranks that hold a share of the blocks each, on the same rows
    exposes_gradients = True  # the gradients are the parameters' .grad (DeepSpeed keeps them in its engine)
    pipelined = False  # a pipeline schedule runs the step's micro-batches (pipeline_step), not the loop

    def __init__(self, world: World | None = None, device: torch.device | None = None) -> None:
        self.world = world or World()
        self.device = device or torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.world_size

    @property
    def model_parallel(self) -> int:
        """Ranks that hold one model replica between them (tensor x pipeline parallel; consecutive ranks)."""
        return self.tensor_parallel * self.pipeline_parallel

    @property
    def data_rank(self) -> int:
        """Which rows of the global batch this rank trains on (the ranks of one model replica: the same)."""
        return self.world.rank // self.model_parallel

    @property
    def data_parallel_size(self) -> int:
        """Into how many row shares a global batch is split: the model replicas whose gradients are averaged."""
        return self.world.world_size // self.model_parallel

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, prints and writes the files every rank would write alike."""
        return self.world.rank == 0

    def describe(self) -> str:
        return ""

    # ---- process group ------------------------------------------------------------------------
    def start(self) -> None:
        """Join the process group."""

    def close(self) -> None:
        """Leave the process group (also after an error)."""

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may train a tokenizer or build a token cache), then the others,
        which find its files."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def seed_rank(self, seed: int) -> None:
        """Give data-parallel ranks other than 0 their own torch random stream (dropout), after the model
        (identical on every rank) is built. The ranks of a tensor-parallel group keep one stream: their
        replicated activations must draw the same dropout masks."""
        if self.data_rank:
            from plmkit.data.sampler import derive_seed

            torch.manual_seed(derive_seed(seed, self.data_rank, 3) % 2**63)

    # ---- batches --------------------------------------------------------------------------------
    def local_rows(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This data-parallel rank's rows of a global batch (every row in one process). A rank left without
        rows (a short last validation batch) gets one row with no targets, so that its collectives stay paired."""
        shares = self.data_parallel_size
        if shares == 1:
            return batch
        n = next(iter(batch.values())).shape[0]
        bounds = [n * r // shares for r in range(shares + 1)]
        start, stop = bounds[self.data_rank], bounds[self.data_rank + 1]
        if start == stop:
            rows = {k: v[:1] for k, v in batch.items()}
            if "labels" in rows:
                rows["labels"] = torch.full_like(rows["labels"], -100)
            return rows
        for key, value in batch.items():
            if value.dim() == 0 or value.shape[0] != n:
                raise ConfigError(
                    f"the objective's batch entry {key!r} has shape {list(value.shape)}, not one row "
                    f"per example ({n}); it cannot be split over {shares} data-parallel ranks"
                )
        return {k: v[start:stop] for k, v in batch.items()}

    def sum_over_ranks(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks."""
        return values

    # ---- model and optimizer --------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the loop calls (DDP-wrapped, FSDP-sharded, the DeepSpeed engine); call it before
        `make_optimizer`, which builds on its (possibly sharded) parameters."""
        return model

    def parameter_count(self, model: torch.nn.Module) -> int:
        """The whole model's parameters (FSDP DTensors count whole; ZeRO-3 keeps the size in ds_numel)."""
        return sum(getattr(p, "ds_numel", p.numel()) for p in unwrap(model).parameters())

    def token_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Validation's (summed loss, target count) of one batch of this rank's rows."""
        from plmkit.evaluate.loss import model_token_loss

        return model_token_loss(model, batch)

    def make_optimizer(self, model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        """The torch optimizer of the wrapped model (the LR schedule drives it)."""
        return build_optimizer(unwrap(model), optim, self.device)

    def uses_grad_scaler(self) -> bool:
        """Whether the loop's fp16 GradScaler scales the losses (DeepSpeed scales them in its engine)."""
        return True

    # ---- the training step ----------------------------------------------------------------------
    def accumulating(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward and backward: gradients are synchronised only on the last."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, scaler: torch.amp.GradScaler, finite: bool) -> bool:
        """Backward of one micro-batch's weighted loss; False when the step is lost (the loop stops it).
        `finite`: no loss of this step on this rank so far was inf or nan."""
        if not finite:
            return False  # nothing more to learn from this step: skip the rest of its micro-batches
        scaler.scale(loss).backward()
        return True

    def agree(self, loss: float, finite: bool) -> tuple[float, bool]:
        """(the step's loss: the sum of the ranks' shares, whether every rank's losses were finite)."""
        return loss, finite

    def scale_gradients(self, model: torch.nn.Module, factor: float) -> None:
        """Multiply the model's gradients by `factor` (the loop's correction of an estimated target count)."""
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> None:
        """Scale the gradients down so that their total 2-norm is at most max_norm."""
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Apply the gradients (fp16: skipped by the scaler when they overflowed)."""
        scaler.step(optimizer)

    def zero_grad(self, optimizer: torch.optim.Optimizer, stepped: bool) -> None:
        """Clear the gradients after a step, or drop them when the step was skipped (`stepped` False)."""
        optimizer.zero_grad(set_to_none=True)

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(
        self,
        run_dir: Path,
        step: int,
        state: TrainState,
        tokenizer: Any,
        info: dict[str, Any],
        keep_last: int,
    ) -> Path:
        """Write checkpoint `step` of `state` (info: trainer_state.json's extra fields); returns its folder."""
        info = {**info, "distributed": self.checkpoint_info()}
        saved = {**state.state_dict(), "rng": rng_state()}
        if self.world_size > 1:
            saved["rank_rng"] = self.gather_rng()
        path = run_dir / "checkpoints" / step_folder_name(step)
        if self.is_main:  # the weights and optimizers are the same on every rank: rank 0 writes them
            saved["optimizers"] = {name: state.optimizers[name].state_dict() for name in state.trained}
            models = {
                name: unwrap(state.models[name])
                for name in [state.main, *state.trained]
                if name in state.models
            }
            path = save_checkpoint(run_dir, step, models, tokenizer, saved, info, keep_last)
        self.barrier()  # nobody moves on before the checkpoint exists
        return path

    def checkpoint_info(self) -> dict[str, Any]:
        """How the checkpoint was written (trainer_state.json's "distributed")."""
        return {"strategy": self.name, "world_size": self.world_size, "layout": self.layout}

    def load(self, checkpoint: Path, state: TrainState, saved: dict[str, Any], info: dict[str, Any]) -> None:
        """Load the models, optimizers, schedules, other states and RNG of `checkpoint` (written by `save`;
        `saved`, `info`: its training_state.pt and trainer_state.json) into `state`."""
        from plmkit.weights import load_weights_into

        self.check_layout(checkpoint, info, (LAYOUT_PLAIN, LAYOUT_DCP))
        if info.get("distributed", {}).get("layout") == LAYOUT_DCP:  # an FSDP run's shards, gathered whole
            from plmkit.train.distributed.dcp import load_sharded_state

            self.check_one_model(state)
            load_sharded_state(
                state.models[state.main], state.optimizers[state.main], checkpoint / DCP_FOLDER, info
            )
        else:
            for name in state.trained:
                folder = model_folder(checkpoint, name, state.main)
                load_weights_into(unwrap(state.models[name]), folder / "model.safetensors")
                state.optimizers[name].load_state_dict(saved["optimizers"][name])
        self.restore(state, saved)

    def restore(self, state: TrainState, saved: dict[str, Any]) -> None:
        """The schedules, other states and this rank's random streams of a checkpoint."""
        state.load_state_dict(saved)
        self.restore_rng(saved)

    def check_one_model(self, state: TrainState) -> None:
        """Sharded checkpoints (dcp/, deepspeed/) hold one trained model for now."""
        if len(state.trained) > 1:
            raise ConfigError(
                f"distributed.strategy={self.name} checkpoints one trained model, but this job trains "
                f"{len(state.trained)} ({', '.join(state.trained)}); use distributed.strategy=ddp or single"
            )

    def check_layout(self, checkpoint: Path, info: dict[str, Any], readable: tuple[str, ...]) -> None:
        written = info.get("distributed", {})
        layout = written.get("layout", LAYOUT_PLAIN)
        if layout not in readable:
            by = written.get("strategy", "?")
            fits = {
                LAYOUT_DCP: "fsdp, ddp or single (on any number of processes)",
                LAYOUT_DEEPSPEED: f"deepspeed on {written.get('world_size', '?')} processes",
                LAYOUT_PLAIN: "single or ddp",
            }[layout]
            raise ConfigError(
                f"cannot resume {checkpoint} with distributed.strategy={self.name}: it was written by strategy "
                f"{by} ({layout} layout); resume it with distributed.strategy={fits}, or convert it with "
                f"`plm convert --from-sharded {checkpoint} --out DIR` and start a new run with init_from=DIR"
            )

    def restore_rng(self, state: dict[str, Any]) -> None:
        """This rank's random streams as the checkpoint saved them (a new stream per data-parallel rank when
        the layout of the processes changed)."""
        per_rank = state.get("rank_rng")
        same_layout = (  # the ranks of a model replica share a stream
            state.get("rank_rng_tensor_parallel", 1) == self.tensor_parallel
            and state.get("rank_rng_pipeline_parallel", 1) == self.pipeline_parallel
        )
        if per_rank is not None and len(per_rank) == self.world_size and same_layout:
            set_rng_state(per_rank[self.rank])
            return
        set_rng_state(state["rng"])  # rank 0's stream
        if self.data_rank:
            from plmkit.data.sampler import derive_seed

            base = int(torch.randint(0, 2**62, (1,)))  # the same number on every rank, then one stream each
            torch.manual_seed(derive_seed(base, self.data_rank, 4) % 2**63)

    def gather_rng(self) -> list[dict[str, Any]]:
        return [rng_state()]
