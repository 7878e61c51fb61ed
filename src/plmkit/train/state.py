"""What a training checkpoint holds: N named models with their optimizers and schedules, and the other
objects whose state a resume needs (data position, objective, gradient scaler, ...).

    models       {"model": policy, "critic": ..., "reference": ...}; the first is the main model, written at
                 the checkpoint's root (plmkit.load(step folder) gives it); the other trained ones in
                 models/<name>/; frozen ones (no optimizer) are rebuilt by the recipe, never written
    optimizers   {name: optimizer} of the trained models, keyed by model name in training_state.pt
    schedulers   {name: LR scheduler}
    stateful     {name: anything with state_dict() / load_state_dict()}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrainState:
    models: dict[str, nn.Module]  # as the loop calls them (wrapped by the strategy)
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    stateful: dict[str, Stateful] = field(default_factory=dict)

    @property
    def main(self) -> str:
        """The name of the first model: the checkpoint's own model."""
        return next(iter(self.models))

    @property
    def trained(self) -> list[str]:
        """The models with an optimizer, in the order of `models`."""
        return [name for name in self.models if name in self.optimizers]

    def state_dict(self) -> dict[str, Any]:
        """Schedules and the other objects' states (the strategy writes the models and optimizers)."""
        return {
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "stateful": {name: s.state_dict() for name, s in self.stateful.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["stateful"][name])
