"""The strategy of a training job: resolved from its `distributed` section and how the process was
launched, built with its process group started."""

from __future__ import annotations

from pathlib import Path

import torch

from plmkit.errors import ConfigError, did_you_mean
from plmkit.train.config import DistributedConfig, OptimConfig, TrainConfig
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.ddp import DDPStrategy
from plmkit.train.distributed.world import World
from plmkit.train.precision import resolve_device, resolve_precision

STRATEGIES = ("auto", "single", "ddp", "fsdp", "deepspeed")


def strategy_name(distributed: DistributedConfig, world: World) -> str:
    """The strategy asked for, resolved and checked against how the process was launched (also the
    tensor-parallel size: before any process waits on another, so every rank fails alike)."""
    name = distributed.strategy
    if name not in STRATEGIES:
        raise ConfigError(
            f"distributed.strategy={name!r} is not one of {', '.join(STRATEGIES)}{did_you_mean(name, STRATEGIES)}"
        )
    if name == "auto":
        name = "ddp" if world.world_size > 1 else "single"
    elif name == "single" and world.world_size > 1:
        raise ConfigError(
            f"distributed.strategy=single, but this is one of {world.world_size} processes started by torchrun; "
            "set distributed.strategy to ddp, fsdp or deepspeed (or auto), or start one process"
        )
    from plmkit.train.distributed.pipeline import check_pipeline_layout
    from plmkit.train.distributed.tensor_parallel import check_tensor_parallel_layout

    check_tensor_parallel_layout(distributed.tensor_parallel, world.world_size, name)
    check_pipeline_layout(distributed.pipeline_parallel, distributed.tensor_parallel, world.world_size, name)
    check_expert_parallel_layout(
        distributed.expert_parallel, world.world_size, name, distributed.tensor_parallel
    )
    return name


def check_expert_parallel_layout(ep: int, world_size: int, strategy: str, tensor_parallel: int) -> None:
    """distributed.expert_parallel fits the strategy and the number of processes (the model's side:
    plmkit.recipes.common.recipe_strategy_name)."""
    key = f"distributed.expert_parallel={ep}"
    if ep == 1:
        return
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(
            f"{key} needs distributed.strategy=ddp or fsdp (the ranks split the experts' computation and "
            f"average the gradients), not {strategy}; set distributed.strategy=ddp or fsdp"
        )
    if tensor_parallel > 1:  # the ranks of a tensor-parallel group share their rows: nothing to exchange
        raise ConfigError(
            f"{key} with distributed.tensor_parallel={tensor_parallel}: experts are split over data-parallel "
            "ranks only; set one of them to 1"
        )
    if world_size % ep:
        raise ConfigError(
            f"{key} does not divide the {world_size} process(es): start a multiple of {ep} "
            f"(--nproc {ep}), or set distributed.expert_parallel to a divisor of {world_size}"
        )


def build_strategy(
    distributed: DistributedConfig, train: TrainConfig, optim: OptimConfig, config_dir: Path
) -> Strategy:
    """The strategy, with its process group started (nothing to start for `single`). `train`: its device,
    precision and batch settings (DeepSpeed generates its JSON from them and `optim`, into `config_dir`)."""
    world = World.from_env()
    name = strategy_name(distributed, world)
    device = resolve_device(train.device)
    if device.type == "cuda" and world.launched:
        if device.index is not None and world.world_size > 1:
            raise ConfigError(
                f"train.device={train.device!r}, but each of the {world.world_size} processes uses its own "
                "GPU (cuda:LOCAL_RANK); set train.device=cuda or auto"
            )
        device = torch.device("cuda", world.local_rank)
    if name == "single":
        return Strategy(world, device)
    precision = resolve_precision(train.precision, device)
    if name == "deepspeed":
        from plmkit.train.distributed.deepspeed import (
            DeepSpeedStrategy,
            check_deepspeed_config,
            deepspeed_config,
        )

        check_deepspeed_config(distributed.deepspeed, train, optim, device)
        ds_config = deepspeed_config(
            train, optim, distributed.deepspeed, world.world_size, precision, device.type
        )
        strategy: Strategy = DeepSpeedStrategy(world, device, ds_config, optim, config_dir)
    elif name == "fsdp":
        from plmkit.train.distributed.fsdp import FSDPStrategy, check_fsdp_config

        check_fsdp_config(precision, optim)
        if distributed.pipeline_parallel > 1:  # 3-D: data x pipeline x tensor parallel
            from plmkit.train.distributed.pipeline import PipelineStrategy, check_pipeline_schedule

            check_pipeline_schedule(
                distributed.pipeline_schedule, distributed.pipeline_parallel, train.accumulation
            )
            strategy = PipelineStrategy(
                world,
                device,
                distributed.pipeline_parallel,
                distributed.pipeline_schedule,
                distributed.tensor_parallel,
                distributed.fsdp,
                precision,
            )
        else:
            strategy = FSDPStrategy(world, device, distributed.tensor_parallel, distributed.fsdp, precision)
    else:
        strategy = DDPStrategy(world, device)
    strategy.start()
    return strategy
