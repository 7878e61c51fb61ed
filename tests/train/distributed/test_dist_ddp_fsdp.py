"""DDP and FSDP2 on 2 CPU ranks (gloo, one thread each) compute what one process computes with the same
global batch: per-step losses within 1e-5 in fp32, with gradient accumulation (no_sync /
set_requires_gradient_sync) and with a random objective (MLM masks drawn from the shared global batch).
A nan loss on one rank makes both skip the step. An FSDP sharded checkpoint resumes to the same next
losses (on 2 ranks, and resharded onto 1 process), and converts into one safetensors checkpoint whose
logits are the live model's.

Each launch is a real `plm pretrain --nproc 2` or `torchrun ... -m plmkit pretrain` process tree."""

from __future__ import annotations

import json

import pytest
import torch

import dist_helpers as dh
import train_helpers as h

pytestmark = pytest.mark.dist
STEPS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    dh.prepare(root)
    return root


@pytest.fixture(scope="module")
def reference(root):
    """One process, batch 8 x accumulation 2: the global batch of 2 ranks x 4 x 2."""
    result = dh.run_single(root, "single", batch=8, accumulation=2)
    return root / "single", result


@pytest.fixture(scope="module")
def fsdp(root):
    proc = dh.succeeded(
        dh.launch(
            root, [dh.GPT, *dh.overrides(root, "fsdp", batch=4, accumulation=2), "distributed.strategy=fsdp"]
        )
    )
    return root / "fsdp", proc


def test_ddp_two_ranks_with_accumulation_equal_one_process(root, reference):
    proc = dh.succeeded(
        dh.launch(root, [dh.GPT, *dh.overrides(root, "ddp", batch=4, accumulation=2)])
    )  # auto: ddp
    single, result = reference
    dh.assert_same_losses(dh.losses(root / "ddp"), dh.losses(single), STEPS)
    assert dh.final_val_loss(root / "ddp") == pytest.approx(result["val_loss"], abs=dh.TOLERANCE)
    # rank 0 alone prints: one summary, one result line (the launcher adds nothing), no error
    assert proc.stdout.count("run gpt-clm") == 1 and "ddp on 2 process(es), gloo" in proc.stdout
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["step"] == 4 and final["tokens"] == result["tokens"] == 4 * 16 * 32
    state = json.loads((dh.checkpoint(root / "ddp", 4) / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["distributed"] == {"strategy": "ddp", "world_size": 2, "layout": "plain"}
    assert (dh.checkpoint(root / "ddp", 4) / "model.safetensors").is_file()  # the normal checkpoint


def test_ddp_mlm_and_a_nan_on_one_rank(root, monkeypatch):
    """MLM masks are random: both ranks draw them for the whole global batch, as one process does. Rank 1's
    second training forward returns nan: both ranks skip step 2 (rank 0's loss was finite), like one
    process whose step 2 is nan. Rank 0 trains the tokenizer; rank 1 waits for it and loads it."""
    args = dh.overrides(root, "ddp-mlm", dh.BERT, batch=4)
    proc = dh.succeeded(
        dh.launch(
            root,
            [dh.BERT, *args, "distributed.strategy=ddp"],
            runner="faulty",
            env={"PLMKIT_TEST_NAN_AT": "1:2"},
        )
    )
    assert (root / "ddp-mlm" / "tokenizer" / "tokenizer.json").is_file()
    import plmkit.recipes.common as setup

    build = setup.build_recipe_model
    calls = {"n": 0}

    def nan_on_second_training_forward(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 2:
                output.loss = output.loss * float("nan")
        return output

    def poisoned(config, tokenizer):
        model = build(config, tokenizer)
        model.register_forward_hook(nan_on_second_training_forward)
        return model

    monkeypatch.setattr(setup, "build_recipe_model", poisoned)
    dh.run_single(
        root, "single-mlm", f"tokenizer.path={root / 'ddp-mlm' / 'tokenizer'}", recipe=dh.BERT, batch=8
    )
    got, want = h.read_metrics(root / "ddp-mlm"), h.read_metrics(root / "single-mlm")
    rows = {r["step"]: r for r in got if "loss" in r}
    assert rows[2]["loss"] == "nan" and rows[4]["skipped_steps"] == 1, proc.stderr[-2000:]
    ok = {s: r["loss"] for s, r in rows.items() if s != 2}
    dh.assert_same_losses(
        ok, {r["step"]: r["loss"] for r in want if "loss" in r and r["step"] != 2}, [1, 3, 4]
    )


def test_fsdp_two_ranks_equal_one_process(fsdp, reference):
    run_dir, proc = fsdp
    single, result = reference
    dh.assert_same_losses(dh.losses(run_dir), dh.losses(single), STEPS)
    assert dh.final_val_loss(run_dir) == pytest.approx(result["val_loss"], abs=dh.TOLERANCE)
    assert "fsdp on 2 process(es)" in proc.stdout and "FSDP units: 1 blocks + the root" in proc.stdout
    for step in (2, 4):
        ckpt = dh.checkpoint(run_dir, step)
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        assert state["distributed"] == {
            "strategy": "fsdp",
            "world_size": 2,
            "layout": "dcp",
            "tensor_parallel": 1,
            "pipeline_parallel": 1,
            "optimizer_state": "flat",
        }
        assert (ckpt / "dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    assert not list((run_dir / "checkpoints").glob(".step-*"))  # no temporary folder left behind


def test_fsdp_resume_from_a_sharded_checkpoint_gives_the_same_next_losses(root, fsdp):
    """Resumed under the user's own torchrun, with CPU offload and without resharding after forward: those
    change where tensors live and when they are gathered, not the arithmetic."""
    run_dir, _ = fsdp
    proc = dh.succeeded(
        dh.launch(
            root,
            [
                dh.GPT,
                *dh.overrides(root, "fsdp-resumed", batch=4, accumulation=2),
                "distributed.strategy=fsdp",
                "distributed.fsdp.cpu_offload=true",
                "distributed.fsdp.reshard_after_forward=false",
                f"resume={dh.checkpoint(run_dir, 2)}",
            ],
            runner="torchrun",
        )
    )
    assert f"resumed from step 2 ({dh.checkpoint(run_dir, 2)})" in proc.stdout
    dh.assert_same_losses(dh.losses(root / "fsdp-resumed"), dh.losses(run_dir), [3, 4])


@pytest.mark.parametrize("strategy", ["fsdp", "single"])
def test_fsdp_checkpoint_of_two_ranks_resumes_on_one_process(root, fsdp, strategy):
    """DCP reshards: the 2-rank shards load into a 1-process FSDP model (or a plain one); with batch 8
    the global batch is unchanged, so the next losses are the 2-rank run's."""
    run_dir, _ = fsdp
    dh.run_single(
        root,
        f"fsdp-on-1-{strategy}",
        f"distributed.strategy={strategy}",
        f"resume={dh.checkpoint(run_dir, 2)}",
        batch=8,
        accumulation=2,
    )
    dh.assert_same_losses(dh.losses(root / f"fsdp-on-1-{strategy}"), dh.losses(run_dir), [3, 4])


def test_fsdp_checkpoint_converts_to_one_safetensors_file(root, fsdp, reference, capsys):
    import torch.distributed as dist

    import plmkit
    from plmkit.config import load_config
    from plmkit.recipes.common import build_run, restore_run
    from plmkit.recipes.config import RecipeConfig

    run_dir, _ = fsdp
    sharded = dh.checkpoint(run_dir, 4)
    out = root / "fsdp-converted"
    code, stdout, err = h.run_cli(["convert", "--from-sharded", sharded, "--out", out], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and "CausalLM" in stdout
    model, tokenizer = plmkit.load(out)
    ids = torch.tensor([tokenizer.encode("The for statement is used to iterate over the elements")])
    with torch.no_grad():
        converted = model(ids).logits

    # the live model: an FSDP run (a group of one) restored from the same shards
    overrides = dh.overrides(root, "fsdp-live", batch=8, accumulation=2) + ["distributed.strategy=fsdp"]
    run = build_run(load_config(RecipeConfig, dh.GPT, overrides))
    try:
        restore_run(run, sharded)
        run.model.eval()
        with torch.no_grad():
            live = run.model(ids).logits
    finally:
        run.strategy.close()
    assert not dist.is_initialized()
    assert (converted - live).abs().max().item() <= 1e-6
    single, _ = reference  # and the same weights as one process trained (to fp32 rounding)
    plain, _ = plmkit.load(dh.checkpoint(single, 4))
    with torch.no_grad():
        assert (plain(ids).logits - converted).abs().max().item() <= 1e-4
    code, stdout, err = h.run_cli(
        ["generate", "--model", out, "--prompt", "The for", "--max-new-tokens", "4"], capsys
    )
    assert code == 0 and stdout.startswith("The for"), err
    code, stdout, err = h.run_cli(["eval", out, "--data", root / "en.txt", "--max-batches", "2"], capsys)
    assert code == 0 and json.loads(stdout)["loss"] > 0, err


def test_a_worker_error_is_one_line_from_the_launcher(root):
    """A user error in the workers (not visible before they start): one `error:` line, exit 2."""
    proc = dh.launch(
        root, [dh.GPT, *dh.overrides(root, "worker-error", batch=4), f"init_from={root / 'nowhere'}"]
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nowhere" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
