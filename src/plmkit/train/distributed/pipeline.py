"""Pipeline parallelism (`distributed.pipeline_parallel: P`, strategy fsdp) and 3-D parallelism: data x
pipeline x tensor parallel on one (dp, pp, tp) DeviceMesh.

    rank = (d * P + p) * T + t      d: data-parallel group, p: pipeline stage, t: tensor-parallel rank

- the model is cut into P stages at block boundaries (plmkit.model.stages: embeddings on the first,
  final norm + LM head + loss on the last); stage p runs on the ranks whose pp coordinate is p;
- inside a stage, tensor parallelism splits each block over the T ranks of the tp dimension
  (plmkit.train.distributed.tensor_parallel), then FSDP2 shards every block and the stage's root over the
  dp dimension (plmkit.train.distributed.fsdp); the P x T ranks of one model replica train on the same rows
  (`data_rank`), the dp groups on their own;
- the step's micro-batches are `train.accumulation` (the one micro-batch count: the engine's and the
  pipeline's), run by `torch.distributed.pipelining` (PipelineStage + ScheduleGPipe: every forward, then
  every backward; or Schedule1F1B: one forward, one backward in the steady state, so at most P micro-batches'
  activations are alive instead of M; it needs M >= P). Activations and their gradients travel between
  neighbouring stages point to point.

The loss keeps the engine's (sum, count) contract exactly. The last stage returns each micro-batch's
(summed loss, targets) as the whole model computes them; the schedule's loss function replays that output
to the job's `loss_fn(models, batch)` (the model it calls returns the stage's output) and returns its
sum times the loop's weight data_parallel_size / (the step's target count). The schedules are built with
`scale_grads=False`, so their backward adds the micro-batches' gradients up unscaled: after FSDP averages
over the dp groups, the gradient is exactly that of sum(loss_sum) / sum(count), as in one process.
Gradient clipping sums the squared norms of every stage's shards once (fsdp.clip_grad_norm with `stages`).

Checkpoints are FSDP's DCP shards, written by every stage under the whole model's parameter names, with the
optimizer state flat (one entry per parameter): they resume with another number of stages (or none, on
one process) and `plm convert --from-sharded` consolidates them. Validation runs the stages one after
another, batch by batch (no micro-batches; the last stage's summed loss and count, zero elsewhere).

Limits: the blocks divide evenly; no tied embeddings (the first and last stages would share a matrix),
no encoder-decoder or relative-position models; the micro-batches of a step have one shape (pre-training's
blocks do; a new shape builds a new schedule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError, ShapeError
from plmkit.io import checkpoint_header
from plmkit.model.pretrained import ModelOutput
from plmkit.train.config import FSDPConfig
from plmkit.train.distributed.fsdp import FSDPStrategy
from plmkit.train.distributed.world import World
from plmkit.train.precision import Precision

SCHEDULES = ("gpipe", "1f1b")


def check_pipeline_layout(pp: int, tp: int, world_size: int, strategy: str) -> None:
    """distributed.pipeline_parallel fits the strategy and the number of processes (checked by every rank
    before any waits on another, and by `--nproc` before it starts them)."""
    if pp == 1:
        return
    key = f"distributed.pipeline_parallel={pp}"
    if pp < 1:
        raise ConfigError(f"{key}: give the number of pipeline stages, a whole number >= 1 (1: none)")
    if strategy != "fsdp":
        raise ConfigError(
            f"{key} needs distributed.strategy=fsdp (pipeline stages, FSDP across the data-parallel "
            f"groups), not {strategy}; set distributed.strategy=fsdp"
        )
    replica = pp * tp
    if world_size % replica:
        what = f"{key} x distributed.tensor_parallel={tp} ({replica} ranks per model)" if tp > 1 else key
        raise ConfigError(
            f"{what} does not divide the {world_size} process(es): start a multiple of {replica} "
            f"(--nproc {replica} for one pipeline, --nproc {2 * replica} for 2 data-parallel groups), "
            f"or set distributed.pipeline_parallel to a divisor of {world_size // tp if tp > 1 else world_size}"
        )


def check_pipeline_schedule(schedule: str, pp: int, micro_batches: int) -> None:
    """The schedule's needs: 1F1B keeps every stage busy only with at least P micro-batches."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"distributed.pipeline_schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    if pp > 1 and schedule == "1f1b" and micro_batches < pp:
        raise ConfigError(
            f"distributed.pipeline_schedule=1f1b needs at least as many micro-batches as stages, but "
            f"train.accumulation={micro_batches} < distributed.pipeline_parallel={pp}; set "
            f"train.accumulation={pp} or more (the pipeline's micro-batch count), or pipeline_schedule=gpipe"
        )


class _ReplayedModel:
    """What the job's loss_fn calls instead of the model on the last stage: the stage's output for this
    micro-batch, as the whole model's forward would return it (loss, loss_sum, targets)."""

    def __init__(self, loss_sum: torch.Tensor, targets: torch.Tensor) -> None:
        self.output = ModelOutput(loss=loss_sum / targets, loss_sum=loss_sum, targets=targets)

    def __call__(self, **batch: torch.Tensor) -> ModelOutput:
        return self.output


class MicroBatchLoss:
    """The schedule's loss function (called on the last stage with the stage's output and the micro-batch's
    index as its target): the job's loss_fn on the replayed output, weighted as the engine weights it. It
    records each micro-batch's summed loss (a metadata pass of the schedule may call it once more for
    micro-batch 0 first; the real call overwrites that)."""

    def begin(
        self,
        models: Mapping[str, nn.Module],
        name: str,
        loss_fn: Any,
        batches: Sequence[dict[str, torch.Tensor]],
        weight: float,
    ) -> None:
        self.models, self.name, self.loss_fn, self.batches, self.weight = (
            models,
            name,
            loss_fn,
            batches,
            weight,
        )
        self.sums: dict[int, float] = {}
        self.finite: dict[int, bool] = {}

    def __call__(self, output: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        i = int(index)
        loss_sum, targets = output
        if int(targets) == 0:  # no targets in these rows: nothing to learn (and 0/0 would be nan)
            self.sums[i], self.finite[i] = 0.0, True
            return loss_sum * 0.0  # still in the graph: the backward reaches every stage
        models = {**self.models, self.name: _ReplayedModel(loss_sum, targets)}
        summed, _ = self.loss_fn(models, self.batches[i])
        self.sums[i] = float(summed.detach())
        self.finite[i] = bool(torch.isfinite(summed))
        return summed * self.weight

    def result(self) -> tuple[float, bool]:
        """(this rank's summed loss of the step, whether every micro-batch's was finite)."""
        return sum(self.sums.values()), all(self.finite.values())


class PipelineStrategy(FSDPStrategy):
    """FSDP2 with pipeline stages (and tensor parallelism inside each): see the module's docstring."""

    pipelined = True

    def __init__(
        self,
        world: World | None = None,
        device: torch.device | None = None,
        pipeline_parallel: int = 2,
        schedule: str = "1f1b",
        tensor_parallel: int = 1,
        fsdp: FSDPConfig | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__(world, device, tensor_parallel, fsdp, precision)
        self.pipeline_parallel = pipeline_parallel
        self.schedule_name = schedule
        self._loss = MicroBatchLoss()
        self._schedule: Any = None
        self._schedule_key: tuple | None = None

    @property
    def stage(self) -> int:
        """This rank's pipeline stage (its pp coordinate)."""
        return (self.world.rank // self.tensor_parallel) % self.pipeline_parallel

    def describe(self) -> str:
        dp, pp, tp = self.data_parallel_size, self.pipeline_parallel, self.tensor_parallel
        layers = self.stage_module.layers
        return (
            super().describe()
            + f"; mesh dp {dp} x pp {pp} x tp {tp}: {pp} pipeline stages of {len(layers)} blocks "
            f"({self.schedule_name} schedule; rank {self.rank}: stage {self.stage}, blocks "
            f"{layers.start}-{layers.stop - 1})"
        )

    def parameter_count(self, model: nn.Module) -> int:
        return self.parameters_total

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh

        from plmkit.model.stages import cut_stage

        self.header = checkpoint_header(model)  # the whole model's, before it is cut and sharded
        self.parameters_total = sum(p.numel() for p in model.parameters())
        shape = (self.data_parallel_size, self.pipeline_parallel, self.tensor_parallel)
        mesh = init_device_mesh(self.device.type, shape, mesh_dim_names=("dp", "pp", "tp"))
        assert mesh["dp"].get_local_rank() == self.data_rank and mesh["pp"].get_local_rank() == self.stage
        self.pp_group = mesh["pp"].get_group()
        stage = cut_stage(model, self.stage, self.pipeline_parallel)
        self.stage_module = stage
        if self.tensor_parallel > 1:
            from plmkit.train.distributed.tensor_parallel import apply_tensor_parallel

            apply_tensor_parallel(stage, mesh["tp"])
        return self.shard(stage, mesh["dp"])

    # ---- the training step: the schedule runs every micro-batch's forward and backward ----------------
    def pipeline_step(
        self,
        models: Mapping[str, nn.Module],
        trained: list[str],
        loss_fn: Any,
        batches: Sequence[dict[str, torch.Tensor]],
        weight: float,
        precision: Precision,
    ) -> tuple[float, bool]:
        """Forward and backward of the step's micro-batches (this rank's rows, on its device) through the
        pipeline; returns (this rank's summed loss: the last stage's, 0 on the others; whether finite)."""
        if len(trained) != 1:
            raise ConfigError(
                f"pipeline parallelism trains one model, but this job trains {len(trained)} "
                f"({', '.join(trained)}); set distributed.pipeline_parallel=1"
            )
        if precision.scaler.is_enabled():  # fsdp refuses fp16 before this; the schedule has no scaler
            raise ConfigError("pipeline parallelism does not scale fp16 losses; use train.precision=bf16")
        name = trained[0]
        schedule = self._schedule_for(models[name], batches)
        inputs = {
            key: torch.cat([b[key] for b in batches]) for key in batches[0]
        }  # split again by the schedule
        input_ids = inputs.pop("input_ids")
        args = (input_ids,) if self.stage == 0 else ()
        self._loss.begin(models, name, loss_fn, batches, weight)
        with precision.autocast():
            schedule.step(*args, target=torch.arange(len(batches)), return_outputs=False, **inputs)
        if self.stage != self.pipeline_parallel - 1:
            return 0.0, True
        return self._loss.result()

    def _schedule_for(self, model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> Any:
        """The schedule for micro-batches of this shape (built once; again only if the shape changes)."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        shapes = [tuple((k, tuple(v.shape)) for k, v in sorted(b.items())) for b in batches]
        if len(set(shapes)) > 1:
            raise ShapeError(
                "pipeline parallelism runs micro-batches of one shape, but this step's differ "
                f"({shapes[0]} vs {next(s for s in shapes if s != shapes[0])}); use fixed-length blocks"
            )
        key = (shapes[0], len(batches))
        if key != self._schedule_key:
            stage = PipelineStage(model, self.stage, self.pipeline_parallel, self.device, group=self.pp_group)
            kind = ScheduleGPipe if self.schedule_name == "gpipe" else Schedule1F1B
            check_pipeline_schedule(self.schedule_name, self.pipeline_parallel, len(batches))
            self._schedule = kind(stage, n_microbatches=len(batches), loss_fn=self._loss, scale_grads=False)
            self._schedule_key = key
        return self._schedule

    # ---- evaluation: the stages one after another, batch by batch -------------------------------------
    @torch.no_grad()
    def token_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """(summed loss, target count) of one batch: the last stage's; (0, 0) on the others. The hidden
        states go to the next stage in fp32 (exact for bf16 ones; FSDP's mixed precision casts them back)."""
        import torch.distributed as dist

        inputs = dict(batch)
        x = inputs.pop("input_ids")  # (B, T)
        if self.stage > 0:
            b, t = x.shape
            x = torch.empty(b, t, model.config.d_model, device=self.device)
            dist.recv(x, group=self.pp_group, group_src=self.stage - 1)
        out = model(x, **inputs)
        if self.stage < self.pipeline_parallel - 1:
            dist.send(out.float().contiguous(), group=self.pp_group, group_dst=self.stage + 1)
            return torch.zeros((), device=self.device), 0
        return out
