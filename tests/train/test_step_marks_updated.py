"""A training step leaves no stale decode-time weights behind: fused AdamW updates the parameters in place
without bumping their version counters, and generation's prepared weights are stamped with them; the
engine's step bumps them, so a model that samples between steps (GRPO, PPO) decodes with its new weights."""

from __future__ import annotations

import copy

import torch

from plmkit.generation import generate_ids
from plmkit.train.distributed.base import Strategy
from plmkit.train.loop import train_step
from plmkit.train.precision import Precision
from tiny import tiny_model


def test_generation_after_a_fused_adamw_step_sees_the_new_weights():
    model = tiny_model("causal", seed=0, dropout=0.0)
    prompt = torch.tensor([[3, 4, 5]])
    generate_ids(model, prompt, max_new_tokens=6)  # decode-time weights prepared and cached
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.2, fused=True)
    batch = {"input_ids": torch.tensor([[3, 4, 5, 6, 7, 8, 9]])}

    def loss_fn(models, b):
        out = models["model"](b["input_ids"], labels=b["input_ids"])
        return out.loss_sum, out.targets

    for _ in range(3):
        train_step(
            {"model": model},
            {"model": optimizer},
            {},
            loss_fn,
            [batch],
            Strategy(),
            Precision("fp32", torch.device("cpu")),
        )
    fresh = copy.deepcopy(model)  # no cached weights
    assert torch.equal(
        generate_ids(model, prompt, max_new_tokens=6), generate_ids(fresh, prompt, max_new_tokens=6)
    )
