"""`plm grpo` end to end on a tiny causal LM and tiny prompt files: it runs and logs what it should, beta = 0
loads no reference, resume equals uninterrupted (also in the middle of a generation batch), num_iterations
> 1 trains several steps on one generation batch, micro-batches give the whole batch's step, reward
functions are imported and weighted, the shipped recipes validate, GSM8K rows run, and bad input fails
with one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from finetune_helpers import write_jsonl

from tiny import ROOT, SHARED_DATA
from train_helpers import COMMON, english_text, losses_by_step, read_metrics, run_cli

SHIPPED = sorted((ROOT / "recipes" / "grpo").glob("*.yaml"))
GSM8K = SHARED_DATA / "gsm8k" / "train_first2000.jsonl"

# Rewards with a spread on an untrained model, so that the advantages (and the gradients) are not all 0.
REWARDS = """
def digits(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / 8 for c in completions]


def short(completions, completion_ids, **columns):
    return [-len(ids) / 8 for ids in completion_ids]


SEEN = {}


def record(prompts, completions, completion_ids, **columns):
    SEEN.update(columns, prompts=list(prompts))
    return [None if i % 4 == 0 else 1.0 for i in range(len(completions))]


def wrong_length(completions, **columns):
    return [1.0]


def text_reward(completions, **columns):
    return ["good" for _ in completions]


def broken(completions, **columns):
    return [1 / 0 for _ in completions]
"""


def save_grpo_base(folder: Path) -> Path:
    """A tiny untrained GPT-2-layout causal LM (256 positions) with a byte-level BPE tokenizer trained on
    additions and English (eos <|endoftext|>, pad <|pad|>), saved as a plmkit checkpoint."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.prompting.arithmetic import sft_rows
    from plmkit.tokenizer import Tokenizer

    if (folder / "plmkit.json").is_file():
        return folder
    texts = [r["prompt"] + r["completion"] for r in sft_rows(500)] + [english_text(8_000)]
    tokenizer = Tokenizer.train(texts, kind="bpe", vocab_size=320, family="gpt2")
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=2, d_ff=64,
        max_positions=256, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_grpo_base(tmp_path_factory.mktemp("grpo-base") / "gpt")


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    from plmkit.prompting.arithmetic import sft_rows

    rows = [
        {"prompt": r["prompt"], "answer": r["completion"], "level": i % 3} for i, r in enumerate(sft_rows(24))
    ]
    (tmp_path / "my_rewards.py").write_text(REWARDS, encoding="utf-8")
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", rows[:16]),
        "dev": write_jsonl(tmp_path / "dev.jsonl", rows[16:]),
        "rewards": tmp_path / "my_rewards.py",
    }


def tiny_grpo(tmp: Path, data: dict[str, Path], steps: int) -> list[str]:
    rewards = f"{data['rewards']}"
    return [
        f"out_dir={tmp / 'runs' / '{name}'}",
        f"data.train={data['train']}",
        f"rewards=[{{function: '{rewards}:digits'}}, {{function: '{rewards}:short', weight: 0.5}}]",
        f"train.steps={steps}",
        "train.batch_size=8",
        "num_generations=4",
        "generation.max_new_tokens=6",
        "data.max_prompt_length=16",
        "optim.lr=1e-2",
        "checkpoint.every=0",
        "log.every=1",
        *COMMON,
    ]


def grpo(capsys, tmp: Path, base: Path, data: dict[str, Path], *overrides: str, steps: int = 2, flags=()):
    recipe = tmp / "recipe.yaml"  # every setting comes from the overrides
    recipe.write_text("name: grpo\n")
    argv = ["grpo", recipe, f"init_from={base}", *tiny_grpo(tmp, data, steps), *overrides, *flags]
    return run_cli(argv, capsys)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")


def test_runs_logs_and_evaluates(base, data, tmp_path, capsys):
    code, out, err = grpo(
        capsys, tmp_path, base, data, "name=logs", f"data.dev={data['dev']}", "grpo.beta=0.1", "eval.every=2",
        "grpo.loss_type=grpo", steps=3,
    )  # fmt: skip
    assert code == 0, err
    assert "reference: a frozen copy (beta 0.1)" in out
    result = json.loads(out.strip().splitlines()[-1])
    rows = {r["step"]: r for r in read_metrics(tmp_path / "runs" / "logs")}
    assert set(rows) == {0, 1, 2, 3}
    assert set(rows[0]) == {"step", "dev_reward", "dev_reward/digits", "dev_reward/short"}
    for key in (
        "loss", "lr", "reward", "reward_std", "reward/digits", "reward/short", "frac_reward_zero_std",
        "completion_length", "completion_length_max", "terminated", "kl", "entropy", "clip_ratio/low",
        "clip_ratio/high", "clip_ratio/region",
    ):  # fmt: skip
        assert all(key in rows[s] for s in (1, 2, 3)), key
    step = rows[1]
    assert step["reward"] == pytest.approx(step["reward/digits"] + 0.5 * step["reward/short"], abs=1e-6)
    assert 1 <= step["completion_length"] <= 6 and step["entropy"] > 0
    assert "dev_reward" in rows[2] and "dev_reward" in rows[3]  # eval.every=2 and the end
    assert result["dev"]["dev_reward"] == rows[3]["dev_reward"]
    assert result["dev_start"]["dev_reward"] == rows[0]["dev_reward"]
    assert (tmp_path / "runs" / "logs" / "checkpoints" / "step-00000003" / "model.safetensors").is_file()


def test_beta_zero_loads_no_reference(base, data, tmp_path, monkeypatch):
    from plmkit.config import load_config
    from plmkit.recipes import grpo_inputs
    from plmkit.recipes.grpo import build_grpo_run
    from plmkit.recipes.grpo_config import GrpoConfig
    from plmkit.train.distributed.base import Strategy

    overrides = [f"init_from={base}", *tiny_grpo(tmp_path, data, 1)]
    config = load_config(GrpoConfig, None, overrides)
    loaded = []
    original = grpo_inputs.build_causal_lm  # every causal LM the recipe loads
    monkeypatch.setattr(grpo_inputs, "build_causal_lm", lambda *a: loaded.append(1) or original(*a))
    run = build_grpo_run(config, Strategy(), None)
    assert run.reference is None and len(loaded) == 1  # the policy only
    assert not any("ref_logprobs" in k for k in run.batch.tensors)
    config = load_config(GrpoConfig, None, [*overrides, "grpo.beta=0.04"])
    run = build_grpo_run(config, Strategy(), None)
    assert run.reference is not None and len(loaded) == 3  # policy, then policy + reference
    assert not any(p.requires_grad for p in run.reference.parameters())


def test_num_iterations_reuses_the_generation_batch(base, data, tmp_path, capsys, monkeypatch):
    from plmkit.recipes import grpo as recipe
    from plmkit.recipes import grpo_step

    sampled, batches = [], []
    original = grpo_step.sample_rollouts

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        sampled.append(out)
        return out

    monkeypatch.setattr(grpo_step, "sample_rollouts", counting)
    step = recipe.grpo_step
    monkeypatch.setattr(recipe, "grpo_step", lambda run, i: batches.append(run.batch) or step(run, i))
    code, _, err = grpo(capsys, tmp_path, base, data, "name=mu", "grpo.num_iterations=3", steps=6)
    assert code == 0, err
    assert len(sampled) == 2  # 6 steps, 3 per generation batch
    rows = {r["step"]: r for r in read_metrics(tmp_path / "runs" / "mu")}
    assert [s for s in rows if "reward" in rows[s]] == [1, 4]  # logged by the step that sampled it
    # the steps after the first train on the very same rows, with the sampling policy's log-probs as "old"
    # (a forward before the first update: the log-probs the sampler saw, at temperature 1)
    second, third = batches[1], batches[2]
    assert second is third and second.used == 3
    assert torch.allclose(second.tensors["old_logprobs"], sampled[0].sample_logprobs, atol=1e-5)
    assert all(rows[s]["loss"] == rows[s]["loss"] for s in rows if s)  # finite


def test_micro_batches_give_the_whole_batch(base, data, tmp_path, capsys):
    """One generation batch of 8 completions: one micro-batch of 8, or two of 4 (accumulation), train the
    same step for every loss type (the loss's count(batch) makes the engine's mean exact)."""
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        runs = []
        for name, sizes in (
            ("whole", ["train.batch_size=8"]),
            ("split", ["train.batch_size=4", "train.accumulation=2"]),
        ):
            run = f"{loss_type}-{name}"
            code, _, err = grpo(
                capsys, tmp_path, base, data, f"name={run}", f"grpo.loss_type={loss_type}", *sizes
            )
            assert code == 0, err
            runs.append(tmp_path / "runs" / run)
        # the second step's loss is on the weights the first step made (Adam's sign-like first steps would
        # amplify float noise in near-zero gradients, so the weights themselves are not compared)
        whole, split = (losses_by_step(r) for r in runs)
        assert whole[1] == pytest.approx(split[1], abs=1e-6), loss_type
        assert whole[2] == pytest.approx(split[2], abs=1e-5), loss_type


def test_resume_equals_uninterrupted(base, data, tmp_path, capsys):
    """Checkpoint 3 falls in the middle of a generation batch (num_iterations 2: batches at steps 1 and 3):
    the batch is saved with it, and the resumed run trains exactly as the uninterrupted one."""
    options = ["grpo.num_iterations=2", "grpo.beta=0.05", "checkpoint.every=3", "checkpoint.keep_last=0"]
    for name in ("whole", "split"):
        code, _, err = grpo(capsys, tmp_path, base, data, f"name={name}", *options, steps=6)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    shutil.rmtree(split / "checkpoints" / "step-00000006")
    code, out, err = grpo(
        capsys, tmp_path, base, data, "name=split", *options, steps=6,
        flags=(f"--resume={split / 'checkpoints' / 'step-00000003'}",),
    )  # fmt: skip
    assert code == 0, err
    assert "resumed from step 3" in out
    assert losses_by_step(whole) == losses_by_step(split)
    expected, resumed = final_weights(whole), final_weights(split)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    rewards = [[r.get("reward") for r in read_metrics(run)] for run in (whole, split)]
    assert rewards[0] == rewards[1]


def test_reward_functions_get_the_columns(base, data, tmp_path, capsys, monkeypatch):
    """ "module:function" from the working directory; the row's columns (and gold) reach the function; a
    None reward adds nothing."""
    monkeypatch.chdir(tmp_path)
    code, out, err = grpo(
        capsys,
        tmp_path,
        base,
        data,
        "name=columns",
        "rewards=[{function: 'my_rewards:record', weight: 2}]",
        steps=1,
    )
    assert code == 0, err
    import my_rewards  # the module the run imported, with what it saw

    seen = my_rewards.SEEN
    assert set(seen) >= {"prompt", "answer", "gold", "prompts"}
    assert len(seen["prompts"]) == 8 and seen["prompts"][0] == seen["prompts"][3]  # a group: one prompt
    assert seen["gold"][0] == seen["answer"][0] and seen["prompts"][0].endswith("=")
    row = read_metrics(tmp_path / "runs" / "columns")[0]
    assert row["reward/record"] == 1.0  # nan (None) left out of the mean
    # a completion no function scores gets its group's mean: the total mean stays 2 x 1.0
    assert row["reward"] == pytest.approx(2.0)


def test_builtin_verifier_rewards_correct_answers():
    from plmkit.recipes.grpo_rewards import BUILTIN, combine

    assert BUILTIN["arithmetic"](prompts=["12+30=", "1+1="], completions=["42", " 3"]) == [1.0, 0.0]
    gsm = {"completions": ["so 5+5=10. The answer is 10.", "The answer is 7. Then 10"], "gold": ["10", "10"]}
    assert BUILTIN["gsm8k_strict"](**gsm) == [1.0, 0.0]
    assert BUILTIN["gsm8k_flexible"](**gsm) == [1.0, 1.0]
    nan = float("nan")
    per_function = torch.tensor([[1.0, nan], [nan, nan], [0.0, 2.0], [3.0, nan], [nan, nan], [nan, nan]])
    # rows 1 (and 4, 5: a group no function scored) get their group's mean of the scored rows (or 0)
    assert combine(per_function, [1.0, 0.5], 2).tolist() == [1.0, 1.0, 1.0, 3.0, 0.0, 0.0]


def test_completion_logprobs_equal_the_full_logits():
    """The LM head only at the positions that predict a completion token gives the log-probs (and the
    entropy) of the full logits there, 0 elsewhere; with a temperature, those of logits / temperature."""
    from plmkit.recipes.grpo_step import completion_logprobs
    from plmkit.recipes.rollouts import token_entropy, token_logprobs
    from tiny import tiny_model

    model = tiny_model("causal", seed=0, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 60, (3, 9), generator=g)
    attention_mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 4 + [0] * 5])
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, 3:], mask[1, 2:6], mask[2, 3:4] = True, True, True
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": mask}
    logits = model(input_ids, attention_mask).logits
    for t in (1.0, 0.7):
        logprobs, entropy = completion_logprobs(model, batch, temperature=t, with_entropy=True)
        assert torch.allclose(logprobs, token_logprobs(logits / t, input_ids) * mask, atol=1e-5)
        assert torch.allclose(entropy, token_entropy(logits / t) * mask, atol=1e-5)
    logprobs.sum().backward()  # differentiable
    assert model.lm_head.decoder.weight.grad is not None


def test_prompt_rendering(base, data, tmp_path):
    """prompt_template over the row's columns gives the text the rewards see; the chat template (null: the
    tokenizer's own, here none, so the text as it is; or a named one) gives the tokens the policy continues."""
    from plmkit.config import load_config
    from plmkit.recipes.grpo_config import GrpoConfig
    from plmkit.recipes.grpo_inputs import grpo_tokenizer, prompt_template, read_prompts

    overrides = [
        f"init_from={base}",
        *tiny_grpo(tmp_path, data, 1),
        "data.prompt_template=Q{level}: {prompt}",
        "data.max_prompt_length=64",
    ]
    for template, rendered in (
        (None, "Q0: {p}"),
        ("raw", "Q0: {p}"),
        ("plain", "### Instruction:\nQ0: {p}\n\n### Response:\n"),
    ):
        config = load_config(GrpoConfig, None, [*overrides, f"chat_template={template or 'null'}"])
        tokenizer = grpo_tokenizer(config)
        split = read_prompts(config, "train", tokenizer, prompt_template(config, tokenizer), 256)
        first = split.prompts[0]
        assert (
            first.text == f"Q0: {first.columns['prompt']}"
            and first.columns["gold"] == first.columns["answer"]
        )
        assert tokenizer.decode(first.ids) == rendered.format(p=first.columns["prompt"]), template


@pytest.mark.parametrize("recipe", SHIPPED, ids=[r.stem for r in SHIPPED])
def test_shipped_recipes_read_and_validate(recipe):
    from plmkit.config import load_config
    from plmkit.recipes.grpo import validate
    from plmkit.recipes.grpo_config import GrpoConfig

    config = load_config(GrpoConfig, recipe)
    validate(config)
    assert config.data.train and config.data.dev and config.rewards


@pytest.mark.skipif(not GSM8K.is_file(), reason="needs ../shared/data/gsm8k")
def test_gsm8k_rows_with_the_builtin_verifier(base, tmp_path, capsys):
    recipe = ROOT / "recipes" / "grpo" / "gsm8k.yaml"
    argv = [
        "grpo", recipe, f"init_from={base}", f"out_dir={tmp_path / '{name}'}", f"data.train={GSM8K}",
        "data.train_rows=:40", "data.dev_rows=:8", f"data.dev={GSM8K}", "data.max_prompt_length=120",
        "data.on_error=skip", "generation.max_new_tokens=8", "num_generations=2", "train.batch_size=4",
        "train.accumulation=1", "train.steps=1", "eval.prompts=4", "chat_template=raw", *COMMON,
    ]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["skipped"]["train"]["counts"]["prompt too long"] > 0  # byte-level tokens: long questions
    assert result["dev"]["dev_reward/gsm8k_flexible"] == 0.0  # an untrained model: fine, it runs


# ---- bad input: one error line, exit 2, no run folder ------------------------------------------------------
def bad_run(capsys, tmp: Path, base: Path, data, *overrides: str, folder: bool = False) -> str:
    code, _, err = grpo(capsys, tmp, base, data, *overrides, "name=bad")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert (tmp / "runs" / "bad").exists() == folder
    return lines[0]


def test_group_of_one(base, data, tmp_path, capsys):
    err = bad_run(capsys, tmp_path, base, data, "num_generations=1")
    assert "num_generations=1" in err and "num_generations=2 or more" in err


def test_batch_not_whole_groups(base, data, tmp_path, capsys):
    err = bad_run(capsys, tmp_path, base, data, "num_generations=3")
    assert "not a multiple of num_generations=3" in err


def test_reward_function_that_cannot_be_imported(base, data, tmp_path, capsys):
    err = bad_run(capsys, tmp_path, base, data, "rewards=[{function: 'no_such_module:f'}]")
    assert "rewards[0].function='no_such_module:f'" in err and "cannot import no_such_module" in err
    err = bad_run(capsys, tmp_path, base, data, f"rewards=[{{function: '{data['rewards']}:digit'}}]")
    assert "has no 'digit'" in err and 'did you mean "digits"' in err
    err = bad_run(capsys, tmp_path, base, data, "rewards=[{function: gsm8k_flexibel}]")
    assert "neither a built-in reward" in err and 'did you mean "gsm8k_flexible"' in err
    err = bad_run(capsys, tmp_path, base, data, "rewards=[]")
    assert "has no rewards" in err


def test_prompt_longer_than_the_context(base, data, tmp_path, capsys):
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "1+1="}, {"prompt": "12+34=" * 30}])
    err = bad_run(capsys, tmp_path, base, data, f"data.train={long}")
    assert "long.jsonl:2" in err and "more than 16 (data.max_prompt_length=16)" in err
    err = bad_run(capsys, tmp_path, base, data, f"data.train={long}", "data.max_prompt_length=300")
    assert "data.max_prompt_length + generation.max_new_tokens=306" in err and "max_positions=256" in err


def test_verifier_without_gold_answers(base, data, tmp_path, capsys):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "1+1="}, {"prompt": "2+2="}])
    err = bad_run(capsys, tmp_path, base, data, f"data.train={plain}", "rewards=[{function: gsm8k_strict}]")
    assert "rewards[0].function=gsm8k_strict" in err and "has none" in err


def test_reward_function_returning_bad_values(base, data, tmp_path, capsys):
    rewards = data["rewards"]
    err = bad_run(
        capsys, tmp_path, base, data, f"rewards=[{{function: '{rewards}:wrong_length'}}]", folder=True
    )
    assert "returned 1 rewards for 8 completions" in err
    shutil.rmtree(tmp_path / "runs" / "bad")  # a run that failed after its start keeps its folder
    err = bad_run(
        capsys, tmp_path, base, data, f"rewards=[{{function: '{rewards}:text_reward'}}]", folder=True
    )
    assert "returned 'good' for completion 0" in err
    shutil.rmtree(tmp_path / "runs" / "bad")
    err = bad_run(capsys, tmp_path, base, data, f"rewards=[{{function: '{rewards}:broken'}}]", folder=True)
    assert "rewards[0] (broken) failed: ZeroDivisionError: division by zero" in err
