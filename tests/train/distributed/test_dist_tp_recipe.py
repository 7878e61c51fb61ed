"""Tensor parallelism as a recipe switch (`distributed.strategy=fsdp distributed.tensor_parallel=2`) on gloo
CPU ranks computes what one process computes with the same global batch: a tiny LLaMA-like recipe (rotary,
GQA with n_kv_head 2, SwiGLU) with gradient accumulation 2 and gradient clipping that really clips gives the
same per-step losses (1e-5, fp32) on 2 ranks (pure TP, dp=1) and on 4 ranks (2 data-parallel groups x 2).
Its sharded checkpoint resumes to the same next losses with the same TP size, and with another one (one
process, plain or FSDP; a TP run from an FSDP-only checkpoint): the fused q|k|v and gate|up rows, stored in
the writer's rank-major order, are moved for the new layout. `plm convert --from-sharded` puts them back
in order (the logits are the reference model's). Bad settings fail before any process starts, one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import dist_helpers as dh
import train_helpers as h
from plmkit.train.distributed.fsdp import FSDPStrategy
from plmkit.train.distributed.world import World

LLAMA = h.ROOT / "recipes" / "llama-clm.yaml"
STEPS = [1, 2, 3, 4]
TP2 = ["distributed.strategy=fsdp", "distributed.tensor_parallel=2"]
CLIP = 0.05  # below the gradient norms of these steps: every step is clipped


def architecture(root) -> list[str]:
    return [
        f"tokenizer.path={root / 'tok'}",
        "model.n_head=4",
        "model.n_kv_head=2",
        f"train.clip_grad={CLIP}",
    ]


def args(root, out: str, *extra: str, batch: int) -> list:
    return [LLAMA, *dh.overrides(root, out, LLAMA, batch=batch, accumulation=2), *architecture(root), *extra]


def single(root, out: str, *extra: str) -> None:
    """One process, batch 8 x accumulation 2: the global batch of every run here."""
    dh.run_single(root, out, *architecture(root), *extra, recipe=LLAMA, batch=8, accumulation=2)


pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-recipe")
    dh.prepare(root)
    return root


@pytest.fixture(scope="module")
def reference(root):
    single(root, "single")
    return root / "single"


@pytest.fixture(scope="module")
def tp(root):
    """2 ranks, tensor parallelism alone (dp=1): both ranks train on all 8 rows of each micro-batch."""
    proc = dh.succeeded(dh.launch(root, args(root, "tp", *TP2, batch=8)))
    return root / "tp", proc


def test_two_tensor_parallel_ranks_equal_one_process(root, tp, reference):
    run_dir, proc = tp
    dh.assert_same_losses(dh.losses(run_dir), dh.losses(reference), STEPS)
    assert dh.final_val_loss(run_dir) == pytest.approx(dh.final_val_loss(reference), abs=dh.TOLERANCE)
    assert "x 1 data-parallel group(s) of 2 tensor-parallel ranks" in proc.stdout
    assert "mesh dp 1 x tp 2: each block split over 2 ranks" in proc.stdout
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["tokens"] == 4 * 2 * 8 * 32  # the global batch, not doubled by the second rank
    for step in (2, 4):
        state = json.loads((dh.checkpoint(run_dir, step) / "trainer_state.json").read_text(encoding="utf-8"))
        assert state["distributed"] == {
            "strategy": "fsdp",
            "world_size": 2,
            "layout": "dcp",
            "tensor_parallel": 2,
            "pipeline_parallel": 1,
            "optimizer_state": "flat",
        }
    # the clipping was real: without it one process trains differently (AdamW hides a uniform scale of the
    # gradients, so the effect is small; tests/tp_workers.py checks the clipped norm itself under SGD)
    single(root, "single-unclipped", "train.clip_grad=null")
    unclipped, clipped = dh.losses(root / "single-unclipped"), dh.losses(reference)
    assert max(abs(unclipped[s] - clipped[s]) for s in STEPS) > 100 * dh.TOLERANCE, (unclipped, clipped)


def test_resume_with_the_same_tensor_parallel_size(root, tp):
    run_dir, _ = tp
    resumed = dh.succeeded(
        dh.launch(
            root,
            args(root, "tp-resumed", *TP2, f"resume={dh.checkpoint(run_dir, 2)}", batch=8),
            runner="torchrun",
        )
    )
    assert "resumed from step 2" in resumed.stdout
    dh.assert_same_losses(dh.losses(root / "tp-resumed"), dh.losses(run_dir), [3, 4])


@pytest.mark.parametrize("strategy", ["single", "fsdp"])
def test_resume_without_tensor_parallelism_moves_the_fused_rows(root, tp, strategy):
    """The 2-rank TP shards (rows in TP-2 order, with Adam's moments) into one unsplit model, plain or FSDP."""
    run_dir, _ = tp
    single(
        root, f"tp-on-1-{strategy}", f"distributed.strategy={strategy}", f"resume={dh.checkpoint(run_dir, 2)}"
    )
    dh.assert_same_losses(dh.losses(root / f"tp-on-1-{strategy}"), dh.losses(run_dir), [3, 4])


def test_tensor_parallel_resumes_an_fsdp_checkpoint(root, reference):
    """The other way: shards of an FSDP run without TP (ordinary row order) into 2 TP ranks."""
    single(root, "fsdp-1", "distributed.strategy=fsdp")
    dh.assert_same_losses(dh.losses(root / "fsdp-1"), dh.losses(reference), STEPS)
    dh.succeeded(
        dh.launch(
            root, args(root, "fsdp-1-on-tp", *TP2, f"resume={dh.checkpoint(root / 'fsdp-1', 2)}", batch=8)
        )
    )
    dh.assert_same_losses(dh.losses(root / "fsdp-1-on-tp"), dh.losses(reference), [3, 4])


def test_tensor_parallel_checkpoint_converts_to_one_safetensors_file(root, tp, reference, capsys):
    import plmkit
    from plmkit.config import load_config
    from plmkit.recipes.common import build_run, restore_run
    from plmkit.recipes.config import RecipeConfig

    run_dir, _ = tp
    out = root / "tp-converted"
    code, stdout, err = h.run_cli(
        ["convert", "--from-sharded", dh.checkpoint(run_dir, 4), "--out", out], capsys
    )
    assert code == 0, err
    model, tokenizer = plmkit.load(out)
    ids = torch.tensor([tokenizer.encode("The for statement is used to iterate over the elements")])
    with torch.no_grad():
        converted = model(ids).logits
    plain, _ = plmkit.load(dh.checkpoint(reference, 4))  # one process trained the same weights
    with torch.no_grad():
        assert (plain(ids).logits - converted).abs().max().item() <= 1e-4
    # the model a resumed run trains on (one process) is the converted one
    run = build_run(
        load_config(RecipeConfig, LLAMA, dh.overrides(root, "tp-live", LLAMA, batch=8) + architecture(root))
    )
    restore_run(run, dh.checkpoint(run_dir, 4))
    run.model.eval()
    with torch.no_grad():
        assert (run.model(ids).logits - converted).abs().max().item() <= 1e-6
    code, stdout, err = h.run_cli(
        ["generate", "--model", out, "--prompt", "The for", "--max-new-tokens", "4"], capsys
    )
    assert code == 0 and stdout.startswith("The for"), err
    code, stdout, err = h.run_cli(["eval", out, "--data", root / "en.txt", "--max-batches", "2"], capsys)
    assert code == 0 and json.loads(stdout)["loss"] > 0, err


def test_four_ranks_as_two_data_parallel_groups_of_two_equal_one_process(root, capsys):
    """2 x 2 on the GPT-2-like recipe (learned positions, biases on the fused q|k|v rows): each
    data-parallel group trains on 4 of the 8 rows, FSDP averages over the groups only; its checkpoint
    converts to the one-process model."""
    import plmkit

    gpt = ["model.n_head=4", f"train.clip_grad={CLIP}"]
    dh.run_single(root, "gpt-single", *gpt, batch=8, accumulation=2)
    command = [
        sys.executable,
        "-m",
        "plmkit",
        "pretrain",
        dh.GPT,
        *dh.overrides(root, "gpt-2x2", batch=4, accumulation=2),
        *gpt,
        *TP2,
        "--nproc",
        "4",
    ]
    proc = subprocess.run(
        [str(c) for c in command], cwd=root, env=dh.environment(), capture_output=True, text=True, timeout=300
    )
    dh.succeeded(proc)
    assert "x 2 data-parallel group(s) of 2 tensor-parallel ranks" in proc.stdout
    dh.assert_same_losses(dh.losses(root / "gpt-2x2"), dh.losses(root / "gpt-single"), STEPS)
    assert dh.final_val_loss(root / "gpt-2x2") == pytest.approx(
        dh.final_val_loss(root / "gpt-single"), abs=dh.TOLERANCE
    )
    out = root / "gpt-2x2-converted"
    code, _, err = h.run_cli(
        ["convert", "--from-sharded", dh.checkpoint(root / "gpt-2x2", 4), "--out", out], capsys
    )
    assert code == 0, err
    (model, tokenizer), (plain, _) = plmkit.load(out), plmkit.load(dh.checkpoint(root / "gpt-single", 4))
    ids = torch.tensor([tokenizer.encode("The for statement is used to iterate over the elements")])
    with torch.no_grad():
        assert (plain(ids).logits - model(ids).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    "extra, nproc, needles",
    [
        (
            ["distributed.strategy=ddp"],
            2,
            ["distributed.tensor_parallel=2 needs distributed.strategy=fsdp", "not ddp"],
        ),
        ([], 2, ["needs distributed.strategy=fsdp", "not ddp"]),  # auto: ddp on 2 processes
        (["distributed.strategy=fsdp"], 3, ["does not divide the 3 process(es)", "--nproc 2", "--nproc 4"]),
        (["distributed.strategy=fsdp"], None, ["does not divide the 1 process(es)"]),  # one process
        (
            ["distributed.strategy=fsdp", "model.n_kv_head=1"],
            2,
            [
                "distributed.tensor_parallel=2: model.n_kv_head=1 is not divisible by the tensor-parallel size 2",
                "choose a tensor-parallel size in [1]",
            ],
        ),
        (["distributed.strategy=fsdp", "peft={method: lora, r: 2}"], 2, ["with peft.method='lora'"]),
    ],
)
def test_bad_tensor_parallel_settings_fail_before_anything_starts(root, capsys, extra, nproc, needles):
    launch = ["--nproc", str(nproc)] if nproc else []
    code, _, err = h.run_cli(
        ["pretrain", *args(root, "bad", "distributed.tensor_parallel=2", *extra, batch=8), *launch], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (root / "bad").exists()


@pytest.mark.parametrize(
    "recipe, needle",
    [
        ("t5-span", "model.family=seq2seq has cross-attention"),
        ("electra", "with objective electra: its generator and discriminator"),
    ],
)
def test_tensor_parallel_with_a_model_it_cannot_split_fails_in_one_line(root, capsys, recipe, needle):
    path = h.ROOT / "recipes" / f"{recipe}.yaml"
    overrides = h.tiny_overrides(path, root / "en.txt", root) + [f"out_dir={root / f'bad-{recipe}'}", *TP2]
    code, _, err = h.run_cli(["pretrain", path, *overrides, "--nproc", "2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (root / f"bad-{recipe}").exists()


def test_the_ranks_of_a_tensor_parallel_group_share_their_rows():
    batch = {"input_ids": torch.arange(16).view(8, 2), "labels": torch.arange(16).view(8, 2)}
    ranks = [FSDPStrategy(World(r, 4, r, True), tensor_parallel=2) for r in range(4)]
    assert [(s.data_rank, s.data_parallel_size) for s in ranks] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    rows = [s.local_rows(batch)["input_ids"][:, 0].tolist() for s in ranks]
    assert rows == [[0, 2, 4, 6], [0, 2, 4, 6], [8, 10, 12, 14], [8, 10, 12, 14]]
    pure = FSDPStrategy(World(1, 2, 1, True), tensor_parallel=2)  # dp = 1: every rank takes every row
    assert pure.local_rows(batch) is batch


def test_fsdp_refuses_8bit_adamw_in_one_line(root, capsys):
    """bitsandbytes' kernels cannot step DTensor shards (FSDP alone or with TP): refused before training."""
    code, _, err = h.run_cli(
        ["pretrain", *args(root, "bad-8bit", "distributed.strategy=fsdp", "optim.name=adamw8bit", batch=8)],
        capsys,
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "fsdp with optim.name=adamw8bit" in lines[0], err
