"""recipes/llama-moe-clm.yaml: a mixture of experts pre-trains through `plm pretrain`, its log carries the
routing (tokens per expert, load-balance CV, dropped tokens) from the training forwards, its checkpoint
loads back with the experts, and bad expert settings stop the command before anything is written."""

from __future__ import annotations

import math

import pytest
import torch

import train_helpers as h

RECIPE = h.ROOT / "recipes" / "llama-moe-clm.yaml"


def test_llama_moe_recipe_trains_and_logs_the_routing(tmp_path, capsys):
    from plmkit.io import load

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    overrides = h.tiny_overrides(RECIPE, corpus, tmp_path, steps=3) + ["model.capacity_factor=0.5"]
    code, out, err = h.run_cli(["pretrain", RECIPE, *overrides], capsys)
    assert code == 0, err
    assert "CausalLM (causal, 1x32), 8 experts, top-2" in out  # the run's description
    assert "expert cv" in out  # the progress line
    run_dir = tmp_path / "runs" / "llama-moe-clm"
    rows = [r for r in h.read_metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        counts = row["moe_tokens_per_expert"]
        assert len(counts) == 8 and all(isinstance(c, int) for c in counts)
        # one MoE layer (n_layer=1), batch 8 x block 32 tokens, 2 experts each
        assert sum(counts) == 8 * 32 * 2
        assert math.isfinite(row["moe_load_cv"]) and row["moe_load_cv"] >= 0
        assert row["moe_dropped"] > 0 and 0 < row["moe_dropped_fraction"] < 1  # capacity 0.5: some drop
        assert row["moe_aux_loss"] > 0 and row["moe_z_loss"] > 0
    checkpoint = run_dir / "checkpoints" / "step-00000003"
    model, _ = load(checkpoint)
    assert model.config.n_experts == 8 and model.config.capacity_factor == 0.5

    # the trained model exports as Mixtral (capacity and z-loss are training settings) with equal logits
    transformers = pytest.importorskip("transformers")
    code, out, err = h.run_cli(["convert", "--to-hf", checkpoint, "--out", tmp_path / "hf"], capsys)
    assert code == 0, err
    reference = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.eval()(ids).logits - reference(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.top_k=9", "model.top_k=9 must be between 1 and model.n_experts=8"),
        ("model.n_experts=0", "model.n_experts=0 is out of range: must be >= 1, or null"),
        ("model.moe_every=7", "model.moe_every=7 is more than model.n_layer=6"),
        ("model.capacity_factor=-1", "model.capacity_factor=-1 is out of range: must be > 0"),
        (
            "distributed.tensor_parallel=2",
            "distributed.tensor_parallel=2: tensor parallelism splits dense MLPs, not model.n_experts=8",
        ),
    ],
)
def test_bad_expert_settings_fail_before_anything_is_written(override, message, tmp_path, capsys):
    extra = ["distributed.strategy=fsdp", "--nproc", "2"] if "tensor_parallel" in override else []
    code, out, err = h.run_cli(["pretrain", RECIPE, override, f"out_dir={tmp_path / 'runs'}", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []
