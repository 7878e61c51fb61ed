"""plm rlhf-demo end to end at a tiny size: every stage runs through its own recipe, the plot and the
summary are written, and the stages' sections take only their recipe's keys."""

from __future__ import annotations

import json

import pytest

from tiny import RECIPES
from train_helpers import run_cli

TINY = [
    "task.pretrain_equations=200", "task.pretrain_paragraphs=200", "task.sft_rows=64", "task.synthetic_pairs=32",
    "task.sampled_prompts=8", "task.ppo_prompts=32", "task.dev_prompts=8", "task.vocab_size=300",
    "pretrain.model.d_model=32", "pretrain.model.n_layer=1", "pretrain.model.n_head=2", "pretrain.model.d_ff=64",
    "pretrain.train.steps=3", "pretrain.train.batch_size=4", "pretrain.train.threads=1",
    "sft.train.steps=3", "sft.train.batch_size=4", "sft.train.threads=1",
    "reward.train.steps=3", "reward.train.batch_size=4", "reward.train.threads=1",
    "ppo.train.steps=2", "ppo.train.batch_size=4", "ppo.train.threads=1", "ppo.ppo.batch_size=8",
    "ppo.ppo.mini_batch_size=4", "ppo.ppo.epochs=1", "ppo.eval.every=1", "ppo.eval.prompts=8", "ppo.eval.ptx_batches=1",
    "compare_ptx=true",
]  # fmt: skip


@pytest.mark.slow
def test_rlhf_demo_runs_every_stage(tmp_path, capsys):
    argv = ["rlhf-demo", RECIPES / "rlhf" / "demo.yaml", f"out_dir={tmp_path / '{name}'}", *TINY]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    run = tmp_path / "rlhf"
    for stage in ("pretrain", "sft", "reward", "ppo", "ppo-no-ptx"):
        assert (run / stage / "metrics.jsonl").is_file(), stage
    summary = json.loads((run / "summary.json").read_text())
    assert "dev_accuracy" in summary["ppo"]["dev"] and "ptx_dev_loss" in summary["ppo_no_ptx"]["dev"]
    assert "verifier accuracy" in out and "-> " in out
    if summary["plot"]:
        assert (run / "rlhf.png").stat().st_size > 0


def test_a_stage_section_takes_its_recipes_keys(tmp_path, capsys):
    argv = ["rlhf-demo", RECIPES / "rlhf" / "demo.yaml", f"out_dir={tmp_path / '{name}'}", "sft.ppo.epochs=2"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "sft" in err and len(err.strip().splitlines()) == 1, (
        err
    )
    assert not (tmp_path / "rlhf").exists()
