"""The recipe's strategy: resolved from distributed.strategy and how the process was launched, built with
its process group started."""

from __future__ import annotations

import torch

from plmkit.errors import ConfigError, did_you_mean
from plmkit.recipes.config import RecipeConfig
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.ddp import DDPStrategy
from plmkit.train.distributed.world import World
from plmkit.train.precision import resolve_device

STRATEGIES = ("auto", "single", "ddp", "fsdp", "deepspeed")


def strategy_name(config: RecipeConfig, world: World) -> str:
    """The strategy the recipe asks for, resolved and checked against how the process was launched (also
    the tensor-parallel size: before any process waits on another, so every rank fails alike)."""
    name = config.distributed.strategy
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
    from plmkit.train.distributed.tensor_parallel import check_tensor_parallel_recipe

    check_tensor_parallel_recipe(config, world.world_size, name)
    return name


def build_strategy(config: RecipeConfig) -> Strategy:
    """The strategy of the recipe, with its process group started (nothing to start for `single`)."""
    world = World.from_env()
    name = strategy_name(config, world)
    device = resolve_device(config.train.device)
    if device.type == "cuda" and world.launched:
        if device.index is not None and world.world_size > 1:
            raise ConfigError(
                f"train.device={config.train.device!r}, but each of the {world.world_size} processes uses its own "
                "GPU (cuda:LOCAL_RANK); set train.device=cuda or auto"
            )
        device = torch.device("cuda", world.local_rank)
    if name == "single":
        return Strategy(world, device)
    if name == "deepspeed":
        from plmkit.train.distributed.deepspeed import DeepSpeedStrategy, check_deepspeed_config

        check_deepspeed_config(config, device)
        strategy: Strategy = DeepSpeedStrategy(world, device)
    elif name == "fsdp":
        from plmkit.train.distributed.fsdp import FSDPStrategy, check_fsdp_config

        check_fsdp_config(config, device)
        strategy = FSDPStrategy(world, device, config.distributed.tensor_parallel)
    else:
        strategy = DDPStrategy(world, device)
    strategy.start()
    return strategy
