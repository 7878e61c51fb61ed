"""Learning-rate schedules with warmup (linear, cosine, constant, warmup-stable-decay) and AdamW's
parameter groups: weight matrices decay; biases, norms and embeddings do not (unless asked)."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, build_model
from plmkit.train.config import OptimConfig, ScheduleConfig
from plmkit.train.optim import build_optimizer, build_scheduler, lr_multiplier, parameter_groups

TOTAL = 110


def lr(step: int, kind: str, warmup: int = 10, floor: float = 0.1, decay_fraction: float = 0.2) -> float:
    config = ScheduleConfig(kind=kind, warmup_steps=warmup, min_lr_ratio=floor, decay_fraction=decay_fraction)
    return lr_multiplier(step, TOTAL, config)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "wsd"])
def test_warmup_is_linear_up_to_the_peak(kind):
    assert [lr(s, kind) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr(10, kind) == pytest.approx(1.0)  # the first step after warmup is at the peak


def test_linear_schedule():
    # after 10 warmup steps, 100 steps of decay from 1 to the floor
    assert lr(60, "linear") == pytest.approx(1 - 0.9 * 0.5)
    assert lr(85, "linear") == pytest.approx(1 - 0.9 * 0.75)
    assert lr(110, "linear") == pytest.approx(0.1)
    assert lr(500, "linear") == pytest.approx(0.1)  # never below the floor
    assert lr(110, "linear", floor=0.0) == pytest.approx(0.0)
    values = [lr(s, "linear") for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cosine_schedule():
    assert lr(60, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mid point
    assert lr(35, "cosine") == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(110, "cosine") == pytest.approx(0.1)
    assert lr(1000, "cosine") == pytest.approx(0.1)
    values = [lr(s, "cosine") for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule():
    assert {lr(s, "constant") for s in range(10, 200)} == {1.0}
    assert lr(0, "constant", warmup=0) == 1.0


def test_warmup_stable_decay_schedule():
    # 110 steps, decay_fraction 0.2: 22 decay steps starting at step 88
    assert lr(50, "wsd") == 1.0
    assert lr(87, "wsd") == 1.0
    assert lr(88, "wsd") == pytest.approx(1.0)
    assert lr(99, "wsd") == pytest.approx(1 - 0.9 * 11 / 22)
    assert lr(110, "wsd") == pytest.approx(0.1)
    assert lr(109, "wsd") == pytest.approx(1 - 0.9 * 21 / 22)


def test_no_warmup_starts_at_the_peak():
    for kind in ("linear", "cosine", "constant", "wsd"):
        assert lr(0, kind, warmup=0) == pytest.approx(1.0)


def test_unknown_schedule_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match='did you mean "cosine"'):
        lr(0, "cosin")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ConfigError, match="schedule.kind"):  # checked when the run is built, not at step N
        build_scheduler(optimizer, 10, ScheduleConfig(kind="stepwise"))


def test_scheduler_applies_the_multiplier_to_the_optimizer():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = build_scheduler(optimizer, TOTAL, ScheduleConfig(kind="cosine", warmup_steps=10))
    seen = []
    for _ in range(TOTAL):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5 * lr(s, "cosine") for s in range(TOTAL)])


# ---- parameter groups --------------------------------------------------------------------------
def tiny(**overrides) -> torch.nn.Module:
    config = ModelConfig(
        family="masked",
        vocab_size=50,
        d_model=16,
        n_layer=1,
        n_head=2,
        d_ff=32,
        max_positions=32,
        type_vocab_size=2,
        embedding_norm=True,
        lm_head_transform=True,
        lm_head_bias=True,
        **overrides,
    )
    return build_model(config)


def names_in(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_parameter_groups_decay_matrices_only():
    model = tiny()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed, kept = names_in(model, decay), names_in(model, no_decay)
    assert not decayed & kept
    assert decayed | kept == {n for n, _ in model.named_parameters()}
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))
        for p in m.parameters()
    }
    assert norms, "the tiny model should have norm layers"
    for name, p in model.named_parameters():
        if p.dim() == 1:
            assert name in kept, f"{name} (bias/norm) must not decay"
        elif id(p) in embeddings:
            assert name in kept, f"{name} (embedding) must not decay by default"
        else:
            assert name in decayed, f"{name} (weight matrix) must decay"
        if id(p) in norms:
            assert name in kept
    assert any(p.dim() == 2 and id(p) not in embeddings for p in decay["params"])  # q/k/v/o, mlp
    # every parameter once, tied ones included (the LM head shares the token embedding)
    assert sum(len(g["params"]) for g in (decay, no_decay)) == len(list(model.parameters()))


def test_parameter_groups_can_decay_embeddings():
    model = tiny()
    decay, no_decay = parameter_groups(model, weight_decay=0.1, decay_embeddings=True)
    token_embedding = model.transformer.embed.tokens.weight
    assert any(p is token_embedding for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])


def test_frozen_parameters_are_left_out():
    model = tiny()
    model.lm_head.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.1)
    frozen = {id(p) for p in model.lm_head.parameters() if not p.requires_grad}
    assert frozen and not frozen & {id(p) for p in decay["params"] + no_decay["params"]}


def test_build_optimizer_uses_the_groups_and_config():
    model = tiny()
    config = OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6, fused=False)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == 1e-3 and decay["betas"] == (0.9, 0.98) and decay["eps"] == 1e-6
    # a step with zero gradients: decayed matrices shrink, biases / norms / embeddings do not move
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    kept = names_in(model, no_decay)
    for name, p in model.named_parameters():
        if name in kept:
            assert torch.equal(p, before[name]), name
        else:
            assert torch.allclose(p, before[name] * (1 - 1e-3 * 0.05)), name
