"""DDP: every rank holds the whole model; gradients are all-reduced."""

from __future__ import annotations

import contextlib

import torch

from plmkit.train.distributed.process_group import ProcessGroupStrategy


class DDPStrategy(ProcessGroupStrategy):
    """DistributedDataParallel: every rank holds the whole model; gradients are all-reduced (averaged) in
    buckets during the backward of the last micro-batch of a step (`no_sync` on the others)."""

    name = "ddp"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # plmkit's buffers are constants (rotary tables): no need to broadcast them before every forward
        # (torch >= 2.13 names the switch forward_sync_buffers, earlier versions broadcast_buffers)
        sync = "forward_sync_buffers"
        if sync not in inspect.signature(DistributedDataParallel.__init__).parameters:
            sync = "broadcast_buffers"
        devices = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=devices, **{sync: False})

    def accumulating(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else model.no_sync()
