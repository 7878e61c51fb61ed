"""The training engine's settings: optimizer, schedule, loop, evaluation, checkpoints, logging,
distribution and the quantized base of QLoRA. A recipe (plmkit.recipes.config) composes these sections.

Closed sets of values are Literal types and numeric limits are declared Ranges, so plmkit.config rejects
`schedule.kind=cosin` or `train.batch_size=0` while the recipe is read, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range

OptimizerName = Literal["adamw", "adamw8bit"]
ScheduleKind = Literal["linear", "cosine", "constant", "wsd"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
StrategyName = Literal["auto", "single", "ddp", "fsdp", "deepspeed"]
PipelineSchedule = Literal["gpipe", "1f1b"]
QuantizeMode = Literal["int8", "int8-dynamic", "nf4"]
QuantizeBackend = Literal["torch", "bitsandbytes"]

Positive = Annotated[int, Range(ge=1)]
Fraction = Annotated[float, Range(ge=0, le=1)]
Beta = Annotated[float, Range(ge=0, lt=1)]


@dataclass
class OptimConfig:
    name: OptimizerName = (
        "adamw"  # adamw | adamw8bit (bitsandbytes' block-wise 8-bit states: pip install 'plmkit[quant]')
    )
    lr: Annotated[float, Range(gt=0)] = 3e-4
    weight_decay: Annotated[float, Range(ge=0, off="0", means="no weight decay")] = 0.1
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    eps: Annotated[float, Range(ge=1e-30)] = 1e-8  # smaller rounds to 0 in fp32: Adam divides 0 by 0
    decay_embeddings: bool = False  # embeddings decay like matrices only when True
    fused: bool | None = None  # None: fused AdamW where the device supports it


@dataclass
class ScheduleConfig:
    kind: ScheduleKind = "cosine"  # linear | cosine | constant | wsd (warmup-stable-decay)
    warmup_steps: Annotated[int, Range(ge=0, off="0", means="no warmup")] = 0
    min_lr_ratio: Fraction = 0.1  # cosine/linear/wsd end at lr * min_lr_ratio
    decay_fraction: Fraction = 0.2  # wsd: the last fraction of steps decays


@dataclass
class TrainConfig:
    steps: Positive = 1000  # optimizer steps
    batch_size: Positive = (
        16  # sequences per micro-batch (per process; global batch = x processes x accumulation)
    )
    accumulation: Positive = 1  # micro-batches per optimizer step
    precision: PrecisionName = "auto"  # auto | fp32 | bf16 | fp16 (fp16 needs CUDA)
    # the global gradient norm is clipped to this; 0 or a negative number is not "off" (-1 flipped gradients)
    clip_grad: Annotated[float, Range(gt=0, off="null", means="no clipping")] | None = 1.0
    compile: bool = False  # torch.compile the model
    gradient_checkpointing: bool = False
    max_bad_steps: Positive = 10  # abort after this many non-finite losses in a row
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Annotated[int, Range(ge=1, off="null", means="torch's default")] | None = (
        None  # torch.set_num_threads on CPU
    )


@dataclass
class EvalConfig:
    every: Annotated[int, Range(ge=0, off="0", means="only before and after training")] = (
        200  # optimizer steps between evaluations
    )
    batches: Positive = 50  # at most this many validation batches per evaluation


@dataclass
class CheckpointConfig:
    every: Annotated[int, Range(ge=0, off="0", means="only the final checkpoint")] = (
        500  # optimizer steps between checkpoints (the final one is always written)
    )
    keep_last: Annotated[int, Range(ge=0, off="0", means="keep every checkpoint")] = 2


@dataclass
class LogConfig:
    every: Positive = 10  # steps between progress lines and metric rows
    tensorboard: bool = True  # when the tensorboard package is installed
    plot: bool = True  # loss-curve PNG at the end (when matplotlib is installed)


@dataclass
class FSDPConfig:
    cpu_offload: bool = False  # parameters, gradients and the optimizer step live on the CPU (CUDA runs)
    reshard_after_forward: bool = (
        True  # free gathered parameters after forward (ZeRO-3); False: keep (ZeRO-2)
    )
    mixed_precision: bool = True  # bf16/fp16 runs: gather parameters in that dtype, reduce gradients in fp32


@dataclass
class DeepSpeedConfig:
    stage: Literal[1, 2, 3] = 2  # ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters
    offload_optimizer: bool = False  # optimizer state and step on the CPU (ZeRO-Offload)
    offload_params: bool = False  # parameters on the CPU between uses (stage 3 only)
    options: dict[str, Any] = field(default_factory=dict)  # extra DeepSpeed JSON keys (not generated ones)


@dataclass
class DistributedConfig:
    strategy: StrategyName = "auto"  # auto (single, or ddp under torchrun) | single | ddp | fsdp | deepspeed
    tensor_parallel: Positive = (
        1  # N > 1 (strategy fsdp): N-way tensor parallelism in each group of N ranks, FSDP across
    )
    # N > 1 (strategy fsdp): the blocks split into N pipeline stages; train.accumulation is the micro-batch count
    pipeline_parallel: Positive = 1
    pipeline_schedule: PipelineSchedule = "1f1b"  # gpipe (all forwards, then all backwards) | 1f1b
    # E > 1 (strategy ddp, a mixture of experts): each group of E ranks splits the experts' computation
    expert_parallel: Positive = 1
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class QuantizeConfig:
    """QLoRA: the base (built or init_from) is quantized before `peft` is applied (plmkit.quant.quantize)."""

    mode: QuantizeMode | None = None  # None: no quantization | int8 | int8-dynamic | nf4
    embeddings: bool = True  # embedding tables and the LM head as int8 rows too
    backend: QuantizeBackend = "torch"  # torch | bitsandbytes
