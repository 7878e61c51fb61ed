"""Training checkpoints: everything needed to continue a run exactly, written atomically.

    RUN/checkpoints/step-00000500/
        plmkit.json, model.safetensors, tokenizer.*   the model (a normal plmkit checkpoint)
        models/NAME/          the other trained models (plmkit checkpoints), when a job trains several
        training_state.pt     optimizers and schedulers by model name, RNG states, sampler and objective positions
        trainer_state.json    step, tokens seen, recipe (human-readable; written last)

Sharded runs (train/distributed/fsdp.py, train/distributed/deepspeed.py) write the same folder with the weights and optimizer state
as shards instead of model.safetensors: dcp/ (torch.distributed.checkpoint) or deepspeed/ (the engine's
files), every rank writing into one temporary folder that rank 0 renames; `plm convert --from-sharded`
makes a single-file checkpoint of them.

The folder is assembled under a temporary name and renamed into place, so a run killed while
writing leaves at most a stale temporary folder, never a half checkpoint: `latest_checkpoint`
only considers complete `step-*` folders, and the previous checkpoint stays valid. A write that fails
(a full disk, an error) deletes the temporary folder; a full disk is a DiskFullError naming the
last complete checkpoint. Ctrl-C while a checkpoint is written waits until it is complete: the run then
stops on a checkpoint that `--resume` continues from.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit.errors import CheckpointError
from plmkit.files import fsync_folder, raise_if_disk_full, replace_folder, step_folder_name
from plmkit.io import write_checkpoint

STATE_FILE = "training_state.pt"
TRAINER_FILE = "trainer_state.json"
MODELS_FOLDER = "models"  # the trained models other than the main one, one plmkit checkpoint each


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }  # plain values: loadable weights_only
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    models: Mapping[str, torch.nn.Module],
    tokenizer: Any,
    state: dict[str, Any],
    info: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep_last`. The first of `models`
    goes at the root (with the tokenizer), the others in models/<name>/."""
    tmp = temp_checkpoint_dir(run_dir, step, os.getpid())
    with interrupts_deferred():
        with removed_on_failure(run_dir, step, tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # left over by a killed writer with this pid
            tmp.mkdir(parents=True)
            (main, model), *others = models.items()
            write_checkpoint(model, tokenizer, tmp)
            for name, other in others:
                folder = tmp / MODELS_FOLDER / name
                folder.mkdir(parents=True)
                write_checkpoint(other, None, folder)
        return finish_checkpoint(run_dir, step, tmp, state, info, keep_last)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block and deliver it when the block ends. A
    KeyboardInterrupt raised inside torch.save leaves its zip writer half-closed, which then raises an
    unrelated RuntimeError that hides the interrupt; deferring it finishes the checkpoint instead."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt here


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, step: int, tmp: Path) -> Iterator[None]:
    """Delete the temporary checkpoint folder `tmp` when writing it fails; a full disk becomes a
    DiskFullError that names the last complete checkpoint (the one a --resume continues from)."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        then = (
            f"the last complete checkpoint is {last}: free some space and continue with --resume"
            if last is not None
            else "the run has no complete checkpoint yet: free some space and start it again"
        )
        raise_if_disk_full(e, run_dir / "checkpoints" / step_folder_name(step), then)
        raise


def model_folder(checkpoint: Path, name: str, main: str) -> Path:
    """Where checkpoint `checkpoint` holds model `name` (the main model: the root)."""
    return checkpoint if name == main else checkpoint / MODELS_FOLDER / name


def temp_checkpoint_dir(run_dir: Path, step: int, token: int) -> Path:
    """Where checkpoint `step` is assembled before the rename (`token`: the writer's pid, so two writers
    never share a temporary folder; the ranks of a sharded run agree on rank 0's)."""
    return run_dir / "checkpoints" / f".step-{step:08d}.tmp-{token}"


def finish_checkpoint(
    run_dir: Path, step: int, tmp: Path, state: dict[str, Any], info: dict[str, Any], keep_last: int
) -> Path:
    """Add the training state and trainer_state.json (last) to the assembled `tmp` folder, make it durable,
    rename it into place as step-N and prune old checkpoints."""
    final = run_dir / "checkpoints" / step_folder_name(step)
    with interrupts_deferred(), removed_on_failure(run_dir, step, tmp):
        with open(tmp / STATE_FILE, "wb") as f:  # a file object: a full disk surfaces as its OSError
            torch.save(state, f)
        (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, **info}, indent=2) + "\n", encoding="utf-8")
        fsync_folder(tmp)  # durable before the rename makes it visible (shard folders too)
        replace_folder(tmp, final)
    prune_checkpoints(run_dir, final, keep_last)
    return final


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a step-N checkpoint folder (-1 for another name)."""
    _, _, digits = checkpoint.name.partition("step-")
    return int(digits) if digits.isdigit() else -1


def prune_checkpoints(run_dir: Path, current: Path, keep_last: int) -> list[Path]:
    """Delete the checkpoints older than `current` (the one just written) beyond the newest `keep_last`
    (`current` counted); returns them. `current` and any checkpoint of a later step are never deleted:
    by step number alone, a later step-N left by another run would outrank, and so delete, this run's
    newest checkpoint (the run-folder rules keep such folders apart, plmkit.recipes.runs)."""
    if keep_last <= 0:
        return []
    step = checkpoint_step(current)
    older = [c for c in list_checkpoints(run_dir) if 0 <= checkpoint_step(c) < step]
    doomed = older[: max(0, len(older) - (keep_last - 1))]
    for old in doomed:
        shutil.rmtree(old, ignore_errors=True)
    return doomed


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def read_trainer_info(checkpoint: Path) -> dict[str, Any]:
    """trainer_state.json of a checkpoint folder: step, tokens, recipe, and how the weights were written."""
    path = checkpoint / TRAINER_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} is not a complete training checkpoint: {TRAINER_FILE} is missing"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); resume from an earlier checkpoint") from e


def load_training_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training_state, trainer_info) of a checkpoint folder."""
    info = read_trainer_info(checkpoint)
    try:
        # weights_only: tensors, numbers, strings and containers only; nothing is executed
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{checkpoint} is not a training checkpoint: {Path(e.filename).name} is missing"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"{checkpoint}: the training state cannot be read ({e}); resume from an earlier checkpoint"
        ) from e
    return state, info
