"""Weights: safetensors files of a model's state (tied tensors stored once) and the model inside wrappers.

save_weights(model, "model.safetensors")        # tied weights written once, aliases in the metadata
load_weights_into(model, "model.safetensors")   # in place; every mismatch is a named CheckpointError
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from plmkit.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
TIED_KEY = "tied"  # safetensors metadata key: JSON {alias: source} of tensors stored once
# Training checkpoints of sharded runs hold the weights in one of these folders instead of model.safetensors;
# see plmkit.train.distributed.consolidate.
DCP_FOLDER = "dcp"  # torch.distributed.checkpoint shards (FSDP, tensor parallelism)
DEEPSPEED_FOLDER = "deepspeed"  # the DeepSpeed engine's own files
SHARDED_FOLDERS = (DCP_FOLDER, DEEPSPEED_FOLDER)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile / DistributedDataParallel / DeepSpeed engine wrappers (their names
    are not ours)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif type(model).__module__.startswith("deepspeed.") and isinstance(
            getattr(model, "module", None), torch.nn.Module
        ):  # DeepSpeedEngine (checked by module name: deepspeed is an optional dependency)
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write the state dict to a safetensors file, storing tensors that share memory only once."""
    state = unwrap(model).state_dict()
    refuse_sharded(state)
    tensors, aliases = dedupe_shared(state)
    save_file(tensors, str(path), metadata={"format": "pt", TIED_KEY: json.dumps(aliases)})


def refuse_sharded(state: dict[str, torch.Tensor]) -> None:
    """A DTensor holds one rank's shard (tensor parallel, FSDP2): saving it would write a fragment."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    sharded = [name for name, tensor in state.items() if isinstance(tensor, DTensor)]
    if sharded:
        raise CheckpointError(
            f"cannot save the model: {len(sharded)} of its tensors (e.g. {sharded[0]}) are "
            "sharded across processes (DTensor); write a full checkpoint with "
            "plmkit.train.distributed.tensor_parallel.save_tensor_parallel_checkpoint(model, tokenizer, "
            "directory), called on every rank"
        )


def dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, {alias: source}). safetensors refuses tensors that share memory (tied weights)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}  # exact view -> first name
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:  # empty tensors own no memory to share
            tensors[name] = tensor
            continue
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if view in seen:  # the same tensor under a second name: a tie
            aliases[name] = seen[view]
            continue
        seen[view] = name
        # A different view of memory already written (rare; e.g. a slice of a fused weight): store a
        # private copy, since safetensors cannot express overlapping tensors.
        shared = storage in storages
        storages.add(storage)
        tensors[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor
    return tensors, aliases


def load_weights_into(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Copy the tensors of a safetensors file into `model` (in place, so tied weights stay tied).

    Every mismatch is a CheckpointError naming the file and the tensor: a missing or truncated file,
    a tensor of the wrong shape, or (with `strict`) tensors missing from the file or unknown to the model.
    """
    path = Path(path)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    with open_weights(path) as f:
        aliases = json.loads((f.metadata() or {}).get(TIED_KEY, "{}"))
        names = list(f.keys())
        unexpected = [n for n in names if n not in expected]
        for name in names:
            if name in unexpected:
                continue
            found, want = tuple(f.get_slice(name).get_shape()), tuple(expected[name].shape)
            if found != want:
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {list(found)}, but the model expects "
                    f"{list(want)}; the checkpoint belongs to another configuration"
                )
            state[name] = read_tensor(f, name, path)
    for alias, source in aliases.items():
        if source in state and alias in expected:
            state[alias] = state[source]
    missing = [n for n in expected if n not in state]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing from the file ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors unknown to {type(model).__name__} ({_few(unexpected)})")
        raise CheckpointError(f"{path} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def open_weights(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError on a truncated or corrupt header
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e


def read_tensor(f: Any, name: str, path: Path) -> torch.Tensor:
    try:
        return f.get_tensor(name)
    except Exception as e:
        message = f"{path}: cannot read tensor {name}, the file is truncated or corrupt: {e}"
        raise CheckpointError(message) from e


def stored_float_dtype(path: Path) -> torch.dtype | None:
    """The one floating dtype of the file's tensors, or None when mixed (or the file has none)."""
    with open_weights(path) as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    floats = {names[d] for d in dtypes if d in names}
    return floats.pop() if len(floats) == 1 else None


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
