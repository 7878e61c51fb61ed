"""Tensor parallelism (plmkit.train.distributed.tensor_parallel): 2 ranks equal one process for GPT-2- and LLaMA-like
causal LMs, a prefix LM, a BERT-like masked LM and a classifier (logits, loss, every
gradient to 1e-5, greedy KV-cache generation, an SGD step, the full state dict and the checkpoint written
from it), TP x FSDP2 on a 2 x 2 mesh equals one process over optimizer steps, and bad sizes fail clearly.
The ranks run in tests/tp_workers.py (gloo, CPU, one thread each)."""

from __future__ import annotations

import types

import pytest
import torch

import tp_workers
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, build_model
from plmkit.peft import apply as apply_peft
from plmkit.train.distributed.tensor_parallel import (
    _rank_major_order,
    apply_tensor_parallel,
    check_tensor_parallel,
)

dist_available = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)


@pytest.mark.dist
@dist_available
def test_tensor_parallel_2_ranks_equals_single_process(tmp_path):
    tp_workers.spawn(tp_workers.tensor_parallel_matches_single_process, 2, tmp_path)


@pytest.mark.dist
@dist_available
def test_fsdp_x_tensor_parallel_2x2_equals_single_process(tmp_path):
    tp_workers.spawn(tp_workers.fsdp_tensor_parallel_matches_single_process, 4, tmp_path, 3)


def test_rank_major_order_groups_each_ranks_rows():
    # q has 4 rows, k and v 2 each; on 2 ranks: [q0 q1 k0 v0 | q2 q3 k1 v1]
    order = _rank_major_order([4, 2, 2], 2)
    assert order.tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    assert _rank_major_order([3, 3], 1).tolist() == list(range(6))


def config(**kw) -> ModelConfig:
    return ModelConfig(**{**tp_workers.TINY, "family": "causal", **kw})


@pytest.mark.parametrize(
    "kw, tp, message",
    [
        (
            dict(n_kv_head=2),
            4,
            "model.n_kv_head=2 is not divisible by the tensor-parallel size 4 (grouped-query "
            "attention needs each rank to hold whole kv heads); choose a tensor-parallel size in [1, 2]",
        ),
        (
            dict(),
            3,
            "model.n_head=4 is not divisible by the tensor-parallel size 3 (each rank computes whole "
            "attention heads); choose a tensor-parallel size in [1, 2, 4]",
        ),
        (
            dict(d_ff=66),
            4,
            "model.d_ff=66 is not divisible by the tensor-parallel size 4 (each rank holds "
            "d_ff / tp hidden units); choose a tensor-parallel size in [1, 2]",
        ),
        (dict(family="seq2seq"), 2, "model.family=seq2seq has cross-attention"),
        (dict(position="relative"), 2, "relative position bias"),
        (dict(), 0, "tensor-parallel size must be >= 1"),
    ],
)
def test_sizes_that_cannot_be_split_are_refused(kw, tp, message):
    with pytest.raises(ConfigError) as error:
        check_tensor_parallel(config(**kw), tp)
    assert message in str(error.value)


class FakeMesh:
    """Enough of a DeviceMesh for the checks that run before any communication."""

    def __init__(self, size: int, ndim: int = 1) -> None:
        self.ndim, self._size = ndim, size

    def size(self) -> int:
        return self._size


def test_apply_refuses_wrong_models_and_meshes():
    model = build_model(config())
    with pytest.raises(ConfigError, match="needs a 1-D mesh"):
        apply_tensor_parallel(model, FakeMesh(4, ndim=2))
    with pytest.raises(ConfigError, match="single-stack model"):
        apply_tensor_parallel(types.SimpleNamespace(config=model.config), FakeMesh(2))
    with pytest.raises(ConfigError, match="n_kv_head"):
        apply_tensor_parallel(build_model(config(n_kv_head=1)), FakeMesh(2))
    lora = apply_peft(build_model(config()), method="lora", r=2, target="attn.qkv")
    with pytest.raises(ConfigError, match=r"blocks.0.attn.qkv is a LoRALinear, not nn.Linear: .* not PEFT"):
        apply_tensor_parallel(lora, FakeMesh(2))
    weight = model.transformer.blocks[0].attn.qkv.weight.clone()
    assert torch.equal(model.transformer.blocks[0].attn.qkv.weight, weight)  # nothing was changed
