"""Every PEFT method trains with gradient checkpointing on: each trainable parameter gets a gradient,
the frozen ones none, and the gradients equal those without checkpointing (dropout on: the recomputed
blocks replay the same dropout masks)."""

from __future__ import annotations

import pytest
import torch

import plmkit.peft as peft
from plmkit.model import ModelConfig, SequenceClassifier, build_model

VOCAB = 61
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=48, dropout=0.1)
ARCHS = {
    "gpt2": dict(family="causal"),
    "llama": dict(
        family="causal",
        position="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        attention_bias=False,
        mlp_bias=False,
        n_kv_head=2,
        tie_embeddings=False,
    ),
    "bart": dict(family="seq2seq", pre_norm=False, embedding_norm=True, final_norm=False, position_offset=2),
    "t5": dict(
        family="seq2seq",
        position="relative",
        norm="rmsnorm",
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        gated_mlp=True,
        attention_scale=1.0,
        tied_output_scale=True,
    ),
}
METHODS = {
    "lora": ("lora", dict(r=2, target="all-linear")),
    "adapter": ("adapter", dict(kind="houlsby", size=4)),
    "prefix": ("prefix", dict(n_tokens=3, hidden=16)),
    "ptuning_v2": ("prefix", dict(n_tokens=3, projection=False)),
    "prompt": ("prompt", dict(n_tokens=3)),
}
CASES = [(m, a) for m in METHODS for a in ("gpt2", "bart")] + [
    ("prefix", "llama"),
    ("prefix", "t5"),
    ("adapter", "t5"),
    ("prefix", "seq-cls"),
]


def build(method: str, arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "seq-cls":
        model = SequenceClassifier(ModelConfig(**TINY), num_labels=3, pooling="last")
    else:
        model = build_model(ModelConfig(**{**TINY, **ARCHS[arch]}))
    name, options = METHODS[method]
    model = peft.apply(model, name, **options)
    with torch.no_grad():  # trained-looking: zero-initialised factors would pass zero gradients on
        for n in peft.peft_parameter_names(model):
            if ".lora_B." in n or ".adapter.up." in n:
                model.get_parameter(n).normal_(0.0, 0.1)
    return model.train()


def gradients(model, arch: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    if arch in ("bart", "t5"):
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": ids[:, :5]}
    elif arch == "seq-cls":
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}
    else:
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": ids}
    torch.manual_seed(7)  # the same dropout masks in both runs
    model(**inputs).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("method", "arch"), CASES)
def test_peft_trains_with_gradient_checkpointing_and_gets_the_same_gradients(method, arch):
    runs = []
    for checkpointing in (False, True):
        model = build(method, arch)
        model.set_gradient_checkpointing(checkpointing)
        runs.append(gradients(model, arch))
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    plain, checkpointed = runs
    assert plain and sorted(plain) == sorted(checkpointed)
    for name, grad in plain.items():
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.allclose(checkpointed[name], grad, atol=1e-6, rtol=0), name
