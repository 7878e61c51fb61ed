"""This process's place among the processes torchrun started."""

from __future__ import annotations

import os
from dataclasses import dataclass

from plmkit.errors import ConfigError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (its environment variables are set)

    @classmethod
    def from_env(cls) -> World:
        if not all(name in os.environ for name in TORCHRUN_VARIABLES):
            return cls()
        try:
            rank, world, local = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
        except ValueError:
            raise ConfigError(
                "RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (they are set by torchrun); "
                + ", ".join(f"{n}={os.environ[n]!r}" for n in TORCHRUN_VARIABLES)
            ) from None
        if not 0 <= rank < world:
            raise ConfigError(
                f"RANK={rank} is not below WORLD_SIZE={world}; launch with torchrun or plm --nproc"
            )
        return cls(rank, world, local, launched=True)
