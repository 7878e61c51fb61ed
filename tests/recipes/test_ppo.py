"""plm ppo end to end on tiny models: it runs and logs, resume equals an uninterrupted run, the PTX term's
gradient is the sum of the two gradients (the recipe's own loss_fn), the LoRA shared-base variant's
reference is the base, and bad input gives one error line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ppo_helpers import save_policy, save_reward_model, write_pretraining_text, write_prompts

from train_helpers import read_metrics, run_cli


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ppo-inputs")
    policy = save_policy(folder / "sft")
    return {
        "policy": policy,
        "reward": save_reward_model(folder / "rm", policy, stats={"mean": 0.1, "std": 2.0}),
        "train": write_prompts(folder / "train.jsonl", 64, seed=1),
        "dev": write_prompts(folder / "dev.jsonl", 8, seed=2),
        "text": write_pretraining_text(folder / "pretrain.txt"),
    }


def overrides(inputs: dict[str, Path], tmp: Path, steps: int = 2, **extra: str) -> list[str]:
    base = {
        "out_dir": str(tmp / "runs" / "{name}"),
        "init_from": str(inputs["policy"]),
        "reward_model": str(inputs["reward"]),
        "data.train": str(inputs["train"]),
        "data.dev": str(inputs["dev"]),
        "data.max_prompt_length": "16",
        "generation.max_new_tokens": "6",
        "ppo.batch_size": "8",
        "ppo.mini_batch_size": "4",
        "ppo.epochs": "2",
        "train.batch_size": "2",
        "train.steps": str(steps),
        "ptx.coef": "1.0",
        "ptx.data.sources": f"[{{path: {inputs['text']}}}]",
        "ptx.data.block_size": "16",
        "ptx.data.cache_dir": str(tmp / "cache"),
        "ptx.batch_size": "2",
        "verifier": "[{function: arithmetic}]",
        "optim.lr": "1e-3",
        "critic_optim.lr": "1e-3",
        "eval.prompts": "8",
        "eval.ptx_batches": "2",
        "checkpoint.every": "0",
        "log.tensorboard": "false",
        "train.threads": "1",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def write_recipe(tmp: Path) -> Path:
    recipe = tmp / "ppo.yaml"
    recipe.write_text("name: ppo-test\n")
    return recipe


def test_ppo_runs_and_logs(inputs, tmp_path, capsys):
    code, out, err = run_cli(["ppo", write_recipe(tmp_path), *overrides(inputs, tmp_path)], capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "ppo-test"
    rows = read_metrics(run)
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "kl", "entropy", "clipfrac", "value_clipfrac", "value_error", "approx_kl", "ptx_loss",
                "accuracy", "rollout_seconds", "learn_seconds", "policy_loss", "value_loss", "kl_coef"):  # fmt: skip
        assert key in steps[0], key
    assert "dev_reward" in rows[0] and "ptx_dev_loss" in rows[0] and "dev_accuracy" in rows[0]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["dev"]["ptx_dev_loss"] > 0
    assert (run / "checkpoints" / "step-00000002" / "models" / "critic" / "model.safetensors").is_file()
