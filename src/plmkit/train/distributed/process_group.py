"""The base of every multi-process strategy (ddp, fsdp, deepspeed): the process group, collectives, and
sharded checkpoints that all ranks write into one folder and rank 0 renames into place."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plmkit.files import step_folder_name
from plmkit.train.checkpoint import rng_state
from plmkit.train.distributed.base import Strategy
from plmkit.train.state import TrainState


class ProcessGroupStrategy(Strategy):
    """What every multi-process strategy shares: the process group, collectives and rank-0 files."""

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def describe(self) -> str:
        launched = "torchrun" if self.world.launched else "a group of one (--nproc N starts N processes)"
        return f"distributed: {self.name} on {self.world_size} process(es), {self.backend}, {launched}"

    def start(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():  # e.g. a user's script that set up the group itself
            return
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world.launched:  # torchrun's environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)
            kwargs: dict[str, Any] = {"device_id": self.device} if self.device.type == "cuda" else {}
            dist.init_process_group(self.backend, **kwargs)
        else:  # a group of one needs no address: an in-memory store
            dist.init_process_group(
                self.backend,
                store=dist.HashStore(),
                rank=0,
                world_size=1,
                timeout=datetime.timedelta(minutes=10),
            )
        self._owns_group = True

    def close(self) -> None:
        import torch.distributed as dist

        if getattr(self, "_owns_group", False) and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def sum_over_ranks(self, *values: float) -> tuple[float, ...]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def agree(self, loss: float, finite: bool) -> tuple[float, bool]:
        total, bad = self.sum_over_ranks(loss, 0.0 if finite else 1.0)
        return total, bad == 0

    def backward(self, loss: torch.Tensor, scaler: torch.amp.GradScaler, finite: bool) -> bool:
        if self.world_size == 1:
            return super().backward(loss, scaler, finite)
        # Several ranks: a rank with a non-finite loss still runs backward, because the others' gradient
        # reductions wait for its gradients; `agree` then makes every rank skip the step.
        scaler.scale(loss).backward()
        return True

    def gather_rng(self) -> list[dict[str, Any]]:
        import torch.distributed as dist

        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def token(self) -> int:
        """Rank 0's process id, the same on every rank: names the temporary folder they all write into."""
        import torch.distributed as dist

        if not hasattr(self, "_token"):
            box = [os.getpid()]
            dist.broadcast_object_list(box, src=0)
            self._token = int(box[0])
        return self._token

    def save_sharded(
        self,
        run_dir: Path,
        step: int,
        state: TrainState,
        tokenizer: Any,
        info: dict[str, Any],
        keep_last: int,
        header: dict[str, Any],
        write_shards: Callable[[Path], None],
    ) -> Path:
        """Checkpoint `step` of a sharded strategy (fsdp, deepspeed): every rank writes its shards with
        `write_shards(folder)` into one temporary folder; rank 0 adds plmkit.json (`header`), the tokenizer
        and the training state and renames it into place, atomically like a one-process checkpoint."""
        import json
        import shutil

        from plmkit.io import CONFIG_FILE
        from plmkit.train.checkpoint import finish_checkpoint, temp_checkpoint_dir

        self.check_one_model(state)
        info = {**info, "distributed": self.checkpoint_info()}
        saved = {**state.state_dict(), "rng": rng_state()}
        tmp = temp_checkpoint_dir(run_dir, step, self.token())
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # left over by a killed run
            tmp.mkdir(parents=True)
        self.barrier()
        write_shards(tmp)
        saved["rank_rng"] = self.gather_rng()
        saved["rank_rng_tensor_parallel"] = self.tensor_parallel
        saved["rank_rng_pipeline_parallel"] = self.pipeline_parallel
        path = run_dir / "checkpoints" / step_folder_name(step)
        if self.is_main:
            (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
            tokenizer.save(tmp)
            path = finish_checkpoint(run_dir, step, tmp, saved, info, keep_last)
        self.barrier()
        return path
