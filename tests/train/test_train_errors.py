"""Bad input to `plm pretrain` is a single `error: ...` line on stderr with exit code 2 (no traceback):
unknown recipe key (with a suggestion), missing data path, model vocab != tokenizer vocab, resume from
a checkpoint of another architecture. Non-finite losses skip the step, are counted, and abort the run
with a clear error after train.max_bad_steps in a row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import train_helpers as h

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return h.write_english(tmp_path_factory.mktemp("corpus") / "en.txt", 20_000)


def pretrain_cli(capsys, tmp_path, corpus, *extra, recipe=GPT, steps=2):
    overrides = h.tiny_overrides(recipe, corpus, tmp_path, steps=steps)
    return h.run_cli(["pretrain", recipe, *overrides, *extra], capsys)


def assert_user_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ---- unknown keys --------------------------------------------------------------------------------
def test_unknown_key_in_the_recipe_file_suggests_the_closest(capsys, tmp_path, corpus):
    data = h.recipe_data(GPT)
    data["optim"]["weight_decy"] = data["optim"].pop("weight_decay")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, recipe=recipe)
    assert_user_error(code, err, str(recipe), '"optim.weight_decy"', 'did you mean "optim.weight_decay"')


def test_unknown_key_in_an_override_suggests_the_closest(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "train.setps=5")
    assert_user_error(code, err, "train.setps", 'did you mean "train.steps"')
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "checkpiont.every=5")
    assert_user_error(code, err, "checkpiont", 'did you mean "checkpoint"')


def test_unknown_objective_suggests_the_closest(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "objective.name=t5-span")
    assert_user_error(code, err, "t5-span", "t5_span")


def test_missing_recipe_file(capsys, tmp_path):
    code, _, err = h.run_cli(["pretrain", tmp_path / "no-such-recipe.yaml"], capsys)
    assert_user_error(code, err, "no-such-recipe.yaml")


# ---- missing data --------------------------------------------------------------------------------
def test_missing_data_path_is_named(capsys, tmp_path, corpus):
    missing = tmp_path / "data" / "missing-corpus.txt"
    code, _, err = pretrain_cli(
        capsys, tmp_path, corpus, f"data.sources=[{{path: {json.dumps(str(missing))}}}]"
    )
    assert_user_error(code, err, str(missing))


def test_missing_data_path_is_named_with_an_existing_tokenizer(capsys, tmp_path, corpus):
    """With tokenizer.path the first reader of the sources is the token store, not tokenizer training."""
    from plmkit.tokenizer import Tokenizer

    Tokenizer.train([corpus.read_text(encoding="utf-8")], kind="bpe", vocab_size=300).save(tmp_path / "tok")
    missing = tmp_path / "missing-corpus.txt"
    code, _, err = pretrain_cli(
        capsys,
        tmp_path,
        corpus,
        f"tokenizer.path={tmp_path / 'tok'}",
        f"data.sources=[{{path: {json.dumps(str(missing))}}}]",
    )
    assert_user_error(code, err, str(missing))


def test_missing_validation_path_is_named(capsys, tmp_path, corpus):
    missing = tmp_path / "missing-valid.txt"
    code, _, err = pretrain_cli(
        capsys, tmp_path, corpus, f"data.validation=[{{path: {json.dumps(str(missing))}}}]"
    )
    assert_user_error(code, err, str(missing))


def test_missing_tokenizer_path_is_named(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, f"tokenizer.path={tmp_path / 'no-tokenizer'}")
    assert_user_error(code, err, "no-tokenizer")


# ---- model / tokenizer mismatch ------------------------------------------------------------------
def test_model_vocab_size_differs_from_the_tokenizer(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "model.vocab_size=999")
    line = assert_user_error(code, err, "model.vocab_size=999", "400")
    assert "tokenizer" in line


def test_fp16_needs_cuda(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "train.precision=fp16", "train.device=cpu")
    assert_user_error(code, err, "fp16", "bf16")
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "train.precision=fp8")
    assert_user_error(code, err, "fp8")


# ---- resume from another architecture ------------------------------------------------------------
@pytest.fixture(scope="module")
def one_layer_checkpoint(tmp_path_factory, corpus):
    import io

    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("arch")
    config = load_config(RecipeConfig, GPT, h.tiny_overrides(GPT, corpus, tmp, steps=2))
    result = pretrain(config, stream=io.StringIO())
    return Path(result["checkpoint"]), Path(config.run_dir)


def test_resume_from_a_checkpoint_of_another_architecture(capsys, tmp_path, corpus, one_layer_checkpoint):
    checkpoint, run_dir = one_layer_checkpoint
    code, _, err = pretrain_cli(
        capsys,
        tmp_path,
        corpus,
        "model.n_layer=2",
        f"tokenizer.path={run_dir / 'tokenizer'}",
        "--resume",
        checkpoint,
    )
    assert_user_error(code, err, str(checkpoint), "n_layer")


def test_resume_true_in_a_run_folder_of_another_architecture(capsys, tmp_path, corpus, one_layer_checkpoint):
    import shutil

    _, run_dir = one_layer_checkpoint
    copy = shutil.copytree(run_dir, tmp_path / "run")  # its own tokenizer, a checkpoint of d_model 32
    code, _, err = pretrain_cli(
        capsys, tmp_path, corpus, "model.d_model=64", f"out_dir={copy}", "resume=true", steps=4
    )
    assert_user_error(code, err, "d_model")


def test_resume_from_another_family(capsys, tmp_path, corpus, one_layer_checkpoint):
    checkpoint, run_dir = one_layer_checkpoint
    code, _, err = pretrain_cli(
        capsys,
        tmp_path,
        corpus,
        "model.family=prefix",
        "objective.name=prefix_lm",
        f"tokenizer.path={run_dir / 'tokenizer'}",
        f"resume={checkpoint}",
    )
    assert_user_error(code, err, str(checkpoint))


def test_resume_from_a_missing_checkpoint(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(
        capsys, tmp_path, corpus, "--resume", tmp_path / "checkpoints" / "step-00000007"
    )
    assert_user_error(code, err, "step-00000007")


def test_resume_from_a_folder_that_is_not_a_training_checkpoint(
    capsys, tmp_path, corpus, one_layer_checkpoint
):
    import shutil

    checkpoint, run_dir = one_layer_checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "training_state.pt").unlink()
    code, _, err = pretrain_cli(
        capsys, tmp_path, corpus, f"tokenizer.path={run_dir / 'tokenizer'}", f"resume={broken}"
    )
    assert_user_error(code, err, "training_state.pt")


# ---- non-finite losses ---------------------------------------------------------------------------
def poison_training_losses(monkeypatch, bad_calls: set[int] | None = None, from_call: int | None = None):
    """Make the model's training-mode loss NaN on the given forward calls (1-based)."""
    import plmkit.recipes.common as setup

    build = setup.build_recipe_model
    calls = {"n": 0}

    def hook(module, args, output):
        if not module.training:
            return output
        calls["n"] += 1
        n = calls["n"]
        if (bad_calls and n in bad_calls) or (from_call is not None and n >= from_call):
            output.loss = output.loss * float("nan")
        return output

    def poisoned(config, tokenizer):
        model = build(config, tokenizer)
        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(setup, "build_recipe_model", poisoned)
    return calls


def test_non_finite_steps_are_skipped_and_counted(capsys, tmp_path, corpus, monkeypatch):
    poison_training_losses(monkeypatch, bad_calls={3, 4, 7})
    code, out, err = pretrain_cli(capsys, tmp_path, corpus, "train.max_bad_steps=3", steps=8)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step"] == 8
    run_dir = tmp_path / "runs" / "gpt-clm"
    rows = {r["step"]: r for r in h.read_metrics(run_dir) if "loss" in r}
    assert [s for s, r in rows.items() if r["loss"] == "nan"] == [3, 4, 7]
    assert all(math.isfinite(r["loss"]) for s, r in rows.items() if s not in (3, 4, 7))
    assert [rows[s]["skipped_steps"] for s in range(1, 9)] == [0, 0, 1, 2, 2, 2, 3, 3]
    state = json.loads((Path(result["checkpoint"]) / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["skipped_steps"] == 3


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_a_skipped_step_leaves_the_weights_alone(tmp_path, corpus, monkeypatch):
    from plmkit.config import load_config
    from plmkit.recipes.common import build_run
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain_step

    poison_training_losses(monkeypatch, bad_calls={2})
    config = load_config(
        RecipeConfig, GPT, h.tiny_overrides(GPT, corpus, tmp_path, steps=4) + ["train.accumulation=2"]
    )
    run = build_run(config)
    run.model.train()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    loss = pretrain_step(
        run, [run.objective(run.train_data.next_batch()) for _ in range(2)]
    )  # 2nd micro-batch NaN
    assert math.isnan(loss)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters())  # no half-accumulated gradient carries over
    assert math.isfinite(pretrain_step(run, [run.objective(run.train_data.next_batch()) for _ in range(2)]))


def test_too_many_non_finite_steps_in_a_row_abort_with_a_clear_error(capsys, tmp_path, corpus, monkeypatch):
    poison_training_losses(monkeypatch, from_call=3)
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "train.max_bad_steps=4", steps=20)
    line = assert_user_error(code, err, "not finite", "4 steps in a row", "step 6")
    assert "optim.lr" in line  # says how to fix it


def test_a_diverging_learning_rate_aborts_with_a_clear_error(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(
        capsys,
        tmp_path,
        corpus,
        "optim.lr=1e30",
        "train.clip_grad=null",
        "schedule.kind=constant",
        "train.max_bad_steps=3",
        steps=30,
    )
    assert_user_error(code, err, "not finite", "3 steps in a row")


# ---- no nan result with exit 0 -----------------------------------------------------------------------
def test_an_eps_that_rounds_to_zero_in_fp32_is_out_of_range(capsys, tmp_path, corpus):
    code, _, err = pretrain_cli(capsys, tmp_path, corpus, "optim.eps=8.3e-141")  # found by the property test
    assert_user_error(code, err, "optim.eps=8.3e-141 is out of range", ">= 1e-30")


def test_diverged_weights_end_in_an_error_not_a_nan_validation_loss(capsys, tmp_path, corpus):
    code, out, err = pretrain_cli(
        capsys, tmp_path, corpus, "optim.lr=1e30", "optim.betas=[0.0, 0.0]", steps=1
    )
    assert_user_error(code, err, "the validation loss is", "the weights diverged")
    assert "nan" not in out.lower()
