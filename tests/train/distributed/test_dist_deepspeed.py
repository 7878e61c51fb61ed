"""DeepSpeed on 2 CPU ranks (DS_ACCELERATOR=cpu, gloo, torch's AdamW): ZeRO-2 with accumulation, and
ZeRO-3 with the optimizer and the parameters offloaded, give the per-step losses of one process with the
same global batch (1e-5, fp32). The engine's checkpoint resumes to the same next losses, refuses other
strategies, and converts into one safetensors checkpoint. The run writes the DeepSpeed JSON it generated.

The first DeepSpeed launch on a machine JIT-compiles DeepSpeed's CPU communication op (~40 s, cached in
~/.cache/torch_extensions); later launches take seconds."""

from __future__ import annotations

import json

import pytest
import torch

import dist_helpers as dh
import train_helpers as h
from plmkit.errors import ConfigError

pytest.importorskip("deepspeed", reason="DeepSpeed tests need pip install 'plmkit[deepspeed]'")
pytestmark = pytest.mark.dist
STEPS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    dh.prepare(root)
    return root


@pytest.fixture(scope="module")
def reference(root):
    dh.run_single(root, "single", batch=8, accumulation=2)
    return root / "single"


@pytest.fixture(scope="module")
def zero2(root):
    proc = dh.succeeded(
        dh.launch(
            root,
            [dh.GPT, *dh.overrides(root, "zero2", batch=4, accumulation=2), "distributed.strategy=deepspeed"],
            timeout=420,
        )
    )  # a cold JIT compile
    return root / "zero2", proc


def test_zero2_two_ranks_equal_one_process(zero2, reference):
    run_dir, proc = zero2
    dh.assert_same_losses(dh.losses(run_dir), dh.losses(reference), STEPS)
    assert dh.final_val_loss(run_dir) == pytest.approx(dh.final_val_loss(reference), abs=dh.TOLERANCE)
    assert "deepspeed on 2 process(es), gloo" in proc.stdout and "ZeRO-2" in proc.stdout
    generated = json.loads((run_dir / "deepspeed_config.json").read_text(encoding="utf-8"))
    assert generated["train_micro_batch_size_per_gpu"] == 4 and generated["gradient_accumulation_steps"] == 2
    assert generated["train_batch_size"] == 16 and generated["zero_optimization"] == {"stage": 2}
    assert generated["optimizer"]["params"]["torch_adam"] is True and generated["gradient_clipping"] == 1.0
    ckpt = dh.checkpoint(run_dir, 4)
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["distributed"] == {
        "strategy": "deepspeed",
        "world_size": 2,
        "layout": "deepspeed",
        "zero_stage": 2,
    }
    assert sorted(p.name for p in (ckpt / "deepspeed").glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_zero2_resume_gives_the_same_next_losses(root, zero2):
    run_dir, _ = zero2
    dh.succeeded(
        dh.launch(
            root,
            [
                dh.GPT,
                *dh.overrides(root, "zero2-resumed", batch=4, accumulation=2),
                "distributed.strategy=deepspeed",
                f"resume={dh.checkpoint(run_dir, 2)}",
            ],
            runner="torchrun",
            timeout=420,
        )
    )
    dh.assert_same_losses(dh.losses(root / "zero2-resumed"), dh.losses(run_dir), [3, 4])


def test_a_deepspeed_checkpoint_resumes_on_its_own_number_of_processes_only(root, zero2):
    """One process without torchrun runs DeepSpeed as a group of one; the 2-rank ZeRO partitions cannot be
    resharded onto it (DCP can, DeepSpeed's files cannot): one error line saying what to do."""
    import subprocess
    import sys

    run_dir, _ = zero2
    args = [
        *dh.overrides(root, "zero2-on-1", batch=8, accumulation=2),
        "distributed.strategy=deepspeed",
        f"resume={dh.checkpoint(run_dir, 2)}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "plmkit", "pretrain", str(dh.GPT), *args],
        cwd=root,
        env=dh.environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert (
        "on 1 process(es): its ZeRO optimizer state is partitioned over 2; resume with --nproc 2" in errors[0]
    )
    assert "plm convert --from-sharded" in errors[0] and "Traceback" not in proc.stderr


def test_a_deepspeed_checkpoint_refuses_other_strategies(root, zero2):
    run_dir, _ = zero2
    with pytest.raises(ConfigError, match="written by strategy deepspeed .*deepspeed on 2 processes"):
        dh.run_single(root, "wrong", f"resume={dh.checkpoint(run_dir, 2)}", batch=8, accumulation=2)


def test_zero2_checkpoint_converts_to_one_safetensors_file(root, zero2, reference, capsys):
    import plmkit

    run_dir, _ = zero2
    out = root / "zero2-converted"
    code, stdout, err = h.run_cli(
        ["convert", "--from-sharded", dh.checkpoint(run_dir, 4), "--out", out], capsys
    )
    assert code == 0 and stdout.startswith("converted "), err
    converted, tokenizer = plmkit.load(out)
    plain, _ = plmkit.load(dh.checkpoint(reference, 4))
    ids = torch.tensor([tokenizer.encode("A class definition of the exception")])
    with torch.no_grad():
        assert (converted(ids).logits - plain(ids).logits).abs().max().item() <= 1e-4
    assert converted.config.tie_embeddings  # GPT-2 ties the output matrix to the token embedding: still one
    assert converted.lm_head.decoder.weight is converted.transformer.embed.tokens.weight


def test_zero3_with_optimizer_and_parameter_offload_equals_one_process(root, reference):
    dh.succeeded(
        dh.launch(
            root,
            [
                dh.GPT,
                *dh.overrides(root, "zero3", batch=4, accumulation=2),
                "distributed.strategy=deepspeed",
                "distributed.deepspeed.stage=3",
                "distributed.deepspeed.offload_optimizer=true",
                "distributed.deepspeed.offload_params=true",
            ],
            timeout=420,
        )
    )
    dh.assert_same_losses(dh.losses(root / "zero3"), dh.losses(reference), STEPS)
    generated = json.loads((root / "zero3" / "deepspeed_config.json").read_text(encoding="utf-8"))
    assert generated["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }
