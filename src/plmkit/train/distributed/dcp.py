"""torch.distributed.checkpoint (DCP) for the sharded strategies: every rank writes its shards of the model
and optimizer state into dcp/; DCP reshards on load (any world size, sharded or not), and the fused rows
of a tensor-parallel run are moved from the writer's order to the reader's.

The optimizer state is written flat, one entry per parameter name (`flatten_optimizer_state_dict`), so that
ranks holding different parameters (pipeline stages) write one consistent state and a reader with another
split (more or fewer stages, none) finds each parameter's moments by name; trainer_state.json records it
("optimizer_state": "flat"). Checkpoints written before keep the nested layout and load as they were."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.train.distributed.tensor_parallel import reorder_fused_rows

FLAT_OPTIMIZER = "flat"  # trainer_state.json's distributed.optimizer_state of checkpoints written here


def written_tensor_parallel(info: dict[str, Any]) -> int:
    """The tensor-parallel size of the run that wrote a checkpoint (its trainer_state.json)."""
    return int(info.get("distributed", {}).get("tensor_parallel", 1))


def _options(flat: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=flat)


def save_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every rank writes its shards of the model and optimizer state (a collective call); the optimizer
    state flat (record FLAT_OPTIMIZER in the checkpoint's distributed info)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(True))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path, info: dict[str, Any]
) -> None:
    """The model and optimizer state of a DCP folder, resharded to this run's layout (any world size,
    sharded or not, any tensor-parallel size: the fused rows are moved from the writer's order to ours;
    any number of pipeline stages). `info`: the checkpoint's trainer_state.json."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not folder.is_dir():
        raise ConfigError(f"{folder.parent} has no {folder.name}/ folder of model and optimizer shards")
    options = _options(info.get("distributed", {}).get("optimizer_state") == FLAT_OPTIMIZER)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)  # our layout (DTensors)
    state = {"model": model_state, "optimizer": optimizer_state}
    # in place, reading whichever stored shards overlap ours (everything, for an unsharded model)
    with _single_process_load(not dist.is_initialized()) as no_dist:
        dcp.load(state, checkpoint_id=str(folder), no_dist=no_dist)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=options,
    )
    reorder_fused_rows(model, optimizer, written_tensor_parallel(info))


def load_sharded_weights(model: torch.nn.Module, folder: Path, written_tensor_parallel: int = 1) -> None:
    """Fill a plain (unsharded) model with the weights of a DCP folder, in one process without a process
    group (DCP reads every shard); the fused rows of a tensor-parallel run are put back in their order."""
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()  # tensors that share the model's storage: loading fills the model
    with _single_process_load(True) as no_dist:
        dcp.load({"model": state}, checkpoint_id=str(folder), no_dist=no_dist)
    reorder_fused_rows(model, None, written_tensor_parallel)


@contextlib.contextmanager
def _single_process_load(no_dist: bool) -> Iterator[bool]:
    """DCP warns on every load without a process group, even when asked for one; here that is the intent."""
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
            )
        yield no_dist
