"""A mixture of experts on 2 CPU ranks (gloo, one thread each) computes what one process computes with the
same global batch: per-step losses within 1e-5 in fp32, router losses included (the whole micro-batch's
load-balancing and z-loss, shared out over the ranks), with plain DDP and with expert parallelism
(`distributed.expert_parallel=2`: each rank computes 4 of the 8 experts for both, all-to-all dispatch),
under DDP and under FSDP2 (which also shards the expert weights at rest).
Bad expert-parallel settings stop before anything is written."""

from __future__ import annotations

import pytest

import dist_helpers as dh
import train_helpers as h

pytestmark = pytest.mark.dist
MOE = h.ROOT / "recipes" / "llama-moe-clm.yaml"
STEPS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-moe")
    dh.prepare(root)
    return root


def moe_overrides(root, out: str, batch: int) -> list[str]:
    # a larger router loss weight, so that a per-rank (inexact) router loss would show in the losses
    return [
        *dh.overrides(root, out, MOE, batch=batch, accumulation=2),
        f"tokenizer.path={root / 'tok'}",
        "model.router_aux_loss_coef=0.5",
        "model.router_z_loss_coef=0.1",
    ]


@pytest.fixture(scope="module")
def reference(root):
    """One process, batch 8 x accumulation 2: the global batch of 2 ranks x 4 x 2."""
    dh.run_single(root, "single", *moe_overrides(root, "single", 8)[-3:], recipe=MOE, batch=8, accumulation=2)
    return root / "single"


@pytest.mark.parametrize("strategy, expert_parallel", [("ddp", 1), ("ddp", 2), ("fsdp", 2)])
def test_two_ranks_equal_one_process(root, reference, strategy, expert_parallel):
    out = f"{strategy}-ep{expert_parallel}"
    args = [MOE, *moe_overrides(root, out, 4), f"distributed.strategy={strategy}"]
    proc = dh.succeeded(dh.launch(root, [*args, f"distributed.expert_parallel={expert_parallel}"]))
    assert f"{strategy} on 2 process(es), gloo" in proc.stdout
    assert ("expert parallel over 2 ranks" in proc.stdout) == (expert_parallel == 2)
    dh.assert_same_losses(dh.losses(root / out), dh.losses(reference), STEPS)
    rows = [r for r in h.read_metrics(root / out) if "moe_tokens_per_expert" in r]
    want = [r for r in h.read_metrics(reference) if "moe_tokens_per_expert" in r]
    # the logged routing covers both ranks' rows: the one process's counts
    assert [r["moe_tokens_per_expert"] for r in rows] == [r["moe_tokens_per_expert"] for r in want]
    for got, expected in zip(rows, want, strict=True):
        assert got["moe_aux_loss"] == pytest.approx(expected["moe_aux_loss"], abs=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["distributed.expert_parallel=2", "model.n_experts=5"],
            "distributed.expert_parallel=2 does not divide model.n_experts=5",
        ),
        (
            ["distributed.expert_parallel=3", "model.n_experts=6"],
            "distributed.expert_parallel=3 does not divide the 2 process(es)",
        ),
        (["distributed.expert_parallel=2", "model.n_experts=null"], "but the model has no experts"),
        (
            ["distributed.expert_parallel=2", "distributed.strategy=deepspeed"],
            "distributed.expert_parallel=2 needs distributed.strategy=ddp or fsdp",
        ),
        (
            ["distributed.expert_parallel=2", "distributed.strategy=fsdp", "distributed.tensor_parallel=2"],
            "experts are split over data-parallel ranks only",
        ),
    ],
)
def test_bad_expert_parallel_settings(extra, message, tmp_path, capsys):
    code, out, err = h.run_cli(
        ["pretrain", MOE, f"out_dir={tmp_path / 'runs'}", *extra, "--nproc", "2"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("error: "), err
    assert message in lines[-1]
    assert not (tmp_path / "runs").exists()
