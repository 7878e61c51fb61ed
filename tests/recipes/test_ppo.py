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


def final_weights(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    folder = run / "checkpoints" / f"step-{step:08d}"
    return {
        "actor": load_file(folder / "model.safetensors"),
        "critic": load_file(folder / "models" / "critic" / "model.safetensors"),
        "ema": load_file(run / "ema" / "model.safetensors"),
    }


def test_resume_equals_uninterrupted(inputs, tmp_path, capsys):
    import shutil

    import torch

    extra = {"checkpoint.every": "2", "checkpoint.keep_last": "0", "ppo.adaptive_kl": "true",
             "ppo.kl_target": "0.01", "ppo.kl_horizon": "50", "ema.decay": "0.9", "eval.every": "2"}  # fmt: skip
    recipe = write_recipe(tmp_path)
    for name in ("whole", "split"):
        code, _, err = run_cli(["ppo", recipe, *overrides(inputs, tmp_path, 4, name=name, **extra)], capsys)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    shutil.rmtree(split / "checkpoints" / "step-00000004")
    shutil.rmtree(split / "ema")
    resume_from = split / "checkpoints" / "step-00000002"
    argv = ["ppo", recipe, *overrides(inputs, tmp_path, 4, name="split", **extra), f"--resume={resume_from}"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = [read_metrics(run) for run in (whole, split)]
    assert rows[0] == [
        {k: v for k, v in r.items() if not k.endswith("_seconds")}
        | {k: v for k, v in r.items() if k.endswith("_seconds")}
        for r in rows[0]
    ]
    timeless = [[{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rr] for rr in rows]
    assert timeless[0] == timeless[1]
    assert timeless[0][-1]["kl_coef"] != timeless[0][1]["kl_coef"]  # the adaptive coefficient moved
    expected, resumed = final_weights(whole, 4), final_weights(split, 4)
    for part in expected:
        assert all(torch.equal(expected[part][k], resumed[part][k]) for k in expected[part]), part


def build_run(inputs: dict[str, Path], tmp: Path, **extra: str):
    from plmkit.config import load_config
    from plmkit.recipes.ppo import build_ppo_run
    from plmkit.recipes.ppo_config import PpoConfig
    from plmkit.train.distributed.build import build_strategy

    config = load_config(PpoConfig, None, overrides(inputs, tmp, **extra))
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    return build_ppo_run(config, strategy, None)


def test_ptx_gradient_is_the_sum_of_the_two(inputs, tmp_path):
    """One engine step over two micro-batches with the recipe's loss: the gradient equals that of
    ppo mean + vf_coef · value mean + γ · pre-training NLL mean, computed by hand in one autograd call."""
    import torch

    from plmkit.recipes.ppo_step import ACTOR, CRITIC, critic_values, make_experience, rows_of, with_ptx
    from plmkit.recipes.rollouts import response_logprobs
    from plmkit.train.loop import train_step

    gamma = 2.5
    # fp32: precision=auto trains under bf16 autocast on a CPU with native bf16 (AVX512-BF16, AMX), while
    # the gradient by hand below runs in fp32
    settings = {"ptx.coef": str(gamma), "train.clip_grad": "null", "train.precision": "fp32"}
    run = build_run(inputs, tmp_path, **settings)
    assert (run.models.reward_mean, run.models.reward_std) == (0.1, 2.0)  # plm reward's stored statistics
    experience, _ = make_experience(run, 0)
    micro = [rows_of(experience, torch.arange(i, i + 2)) for i in (0, 2)]
    with_ptx(run, micro)
    params = [p for m in (run.actor, run.critic) for p in m.parameters() if p.requires_grad]
    recorded = {}

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    recorded[p] = p.grad.clone()

    optimizers = {
        ACTOR: Recording(run.actor.parameters(), lr=0.0),
        CRITIC: Recording(run.critic.parameters(), lr=0.0),
    }
    train_step(
        {ACTOR: run.actor, CRITIC: run.critic}, optimizers, {}, run.loss, micro, run.strategy, run.precision
    )

    # by hand: the two terms' means over the whole mini-batch, each from its own forward passes
    from plmkit.align.ppo import policy_loss, value_loss

    p = run.config.ppo
    ppo_sum, ppo_count, ptx_sum, ptx_count = 0.0, 0, 0.0, 0
    for b in micro:
        rows = {k: b[k] for k in ("input_ids", "attention_mask", "response_mask")}
        logprobs = response_logprobs(run.actor, rows)
        values = critic_values(run.critic, rows)
        pl, n, _ = policy_loss(logprobs, b["old_logprobs"], b["advantages"], b["response_mask"], p.clip_eps)
        vl, _, _ = value_loss(values, b["old_values"], b["returns"], b["response_mask"], p.value_clip)
        ppo_sum, ppo_count = ppo_sum + pl + p.vf_coef * vl, ppo_count + int(n)
        out = run.actor(b["ptx_input_ids"], labels=b["ptx_labels"])
        ptx_sum, ptx_count = ptx_sum + out.loss_sum, ptx_count + int(out.targets)
    ppo_grads = torch.autograd.grad(ppo_sum / ppo_count, params, allow_unused=True)
    ptx_grads = torch.autograd.grad(ptx_sum / ptx_count, params, allow_unused=True)
    for param, g_ppo, g_ptx in zip(params, ppo_grads, ptx_grads, strict=True):
        expected = (g_ppo if g_ppo is not None else 0) + gamma * (g_ptx if g_ptx is not None else 0)
        torch.testing.assert_close(recorded[param], expected + torch.zeros_like(param), atol=1e-6, rtol=1e-5)
    assert any(g is not None and g.abs().sum() > 0 for g in ptx_grads)  # the PTX term reaches the actor


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"data.max_prompt_length": "2"}, "more than 2"),
        ({"generation.max_new_tokens": "62"}, "positions"),
        ({"reward_model": "POLICY"}, "not a reward model"),
        ({"ppo.mini_batch_size": "3"}, "multiple of the next"),
        ({"ptx.data.sources": "[]"}, "ptx.coef=1.0 needs pre-training text"),
        ({"peft": "{method: prefix}"}, "peft.method=prefix"),
        ({"init_from": "/nonexistent/sft"}, "/nonexistent/sft"),
    ],
)
def test_bad_input_is_one_error_line(inputs, tmp_path, capsys, extra, message):
    extra = {k: (str(inputs["policy"]) if v == "POLICY" else v) for k, v in extra.items()}
    code, out, err = run_cli(["ppo", write_recipe(tmp_path), *overrides(inputs, tmp_path, **extra)], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "runs" / "ppo-test").exists()


def test_reward_model_of_another_tokenizer(inputs, tmp_path, capsys):
    from plmkit.io import load, save
    from plmkit.tokenizer import Tokenizer

    model, _ = load(inputs["reward"])
    other = Tokenizer.train(["the cat sat on the mat " * 50], kind="bpe", vocab_size=280, family="gpt2")
    save(model, other, tmp_path / "rm-other")
    argv = [
        "ppo",
        write_recipe(tmp_path),
        *overrides(inputs, tmp_path, reward_model=str(tmp_path / "rm-other")),
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "another tokenizer" in err and len(err.strip().splitlines()) == 1, err


def test_lora_shared_base_runs_and_its_reference_is_the_base(inputs, tmp_path, capsys):
    import torch

    from plmkit.io import load
    from plmkit.recipes.ppo_step import learn, make_experience, reference_logprobs
    from plmkit.recipes.rollouts import frozen_logprobs

    lora = {"peft": "{method: lora, r: 4, target: all-linear}"}
    code, _, err = run_cli(["ppo", write_recipe(tmp_path), *overrides(inputs, tmp_path, 2, **lora)], capsys)
    assert code == 0, err
    run = build_run(inputs, tmp_path / "second", **lora)
    assert run.models.reference is None
    actor_base = {n: p for n, p in run.actor.named_parameters() if not p.requires_grad}
    critic_frozen = {n: p for n, p in run.critic.named_parameters() if not p.requires_grad}
    shared = [n for n, p in critic_frozen.items() if n in actor_base and actor_base[n] is p]
    assert shared and len(shared) == len([n for n in critic_frozen if n.startswith("transformer.")])
    experience, _ = make_experience(run, 0)
    learn(run, experience, 0)  # the adapters move away from zero
    batch = {k: experience[k] for k in ("input_ids", "attention_mask", "response_mask")}
    sft, _ = load(inputs["policy"])
    torch.testing.assert_close(reference_logprobs(run, batch), frozen_logprobs(sft, batch), atol=1e-5, rtol=0)
    assert not torch.allclose(frozen_logprobs(run.actor, batch), frozen_logprobs(sft, batch), atol=1e-4)


def test_the_shipped_recipe_reads_and_validates():
    from plmkit.config import load_config
    from plmkit.recipes.ppo import validate
    from plmkit.recipes.ppo_config import PpoConfig
    from tiny import RECIPES

    config = load_config(PpoConfig, RECIPES / "ppo" / "arithmetic.yaml")
    validate(config)
    assert config.ptx.coef == 1.0 and config.verifier[0].function == "arithmetic"
