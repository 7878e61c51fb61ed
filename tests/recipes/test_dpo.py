"""`plm dpo` end to end on a tiny GPT and tiny preference files: the first step's loss is ln 2 and the dev
reward accuracy and margin rise; the reference as a frozen copy, another checkpoint, the LoRA base with its
adapters off, and precomputed log-probs all give the same losses; resume is exact (and reads the stored
reference log-probs back); every loss type runs; bad input fails with one `error:` line, exit 2, no run
folder; the shipped recipes run on their own data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from finetune_helpers import save_base, write_jsonl
from preference_helpers import data_files, hh_rows, last_json, plm, preference_rows, save_gpt

from tiny import ROOT
from train_helpers import losses_by_step, read_metrics

SHIPPED = sorted((ROOT / "recipes" / "dpo").glob("*.yaml"))
LN2 = math.log(2)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dpo-bases")
    return {
        "gpt": save_gpt(folder / "gpt"),
        "other_vocab": save_gpt(folder / "gpt-other", vocab_size=300),
        "bert": save_base(folder / "bert"),
    }


def dpo(capsys, tmp: Path, base: Path, *overrides: str, steps: int = 4, flags: tuple = ()):
    return plm(capsys, "dpo", tmp, base, "optim.lr=1e-3", *overrides, steps=steps, flags=flags)


def dev_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "dev_rewards/accuracies" in r]


def test_dpo_learns_from_ln2(bases, tmp_path, capsys):
    from plmkit.prompting.chat import BUILTIN
    from plmkit.tokenizer import Tokenizer

    data = data_files(tmp_path, preference_rows)
    code, out, err = dpo(capsys, tmp_path, bases["gpt"], *data, "name=learn", steps=30)
    assert code == 0, err
    run = tmp_path / "runs" / "learn"
    rows = read_metrics(run)
    step1 = next(r for r in rows if r["step"] == 1)
    assert step1["loss"] == pytest.approx(LN2, abs=1e-6)  # the policy is the reference at step 1
    assert step1["rewards/chosen"] == step1["rewards/rejected"] == 0.0
    start, end = dev_rows(run)[0], dev_rows(run)[-1]
    assert start["dev_rewards/margins"] == 0.0 and start["dev_loss"] == pytest.approx(LN2, abs=1e-6)
    assert end["dev_rewards/accuracies"] >= 0.9 and end["dev_rewards/margins"] > 0.5
    assert {"logps/chosen", "logps/rejected", "rewards/accuracies", "rewards/margins"} <= set(step1)
    result = last_json(out)
    assert result["examples"] == {"train": 48, "dev": 16} and result["dev"]["loss"] < 0.5 * LN2
    assert "frozen copy of the initial policy" in result["reference"]
    tokenizer = Tokenizer.load(Path(result["checkpoint"]))  # the template the pairs were rendered with
    assert tokenizer.chat_template == BUILTIN["plain"].source


def test_log_probs_of_the_labelled_positions_equal_the_full_logits(bases):
    """The policy's fast path (the LM head on the response positions only) = log_softmax of the full
    logits gathered at the labels, values and gradients."""
    from plmkit.io import load
    from plmkit.model.losses import sequence_logprobs
    from plmkit.recipes.dpo import labelled_logprobs

    model, _ = load(bases["gpt"])
    ids = torch.randint(5, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # the prompt
    fast, counts = labelled_logprobs(model, ids, mask, labels)
    (fast.sum()).backward()
    grad = model.transformer.embed.tokens.weight.grad.clone()
    model.zero_grad()
    logits = model(ids, attention_mask=mask, compute_logits=True).logits
    full, full_counts = sequence_logprobs(logits, labels, shift=True)
    full.sum().backward()
    assert torch.allclose(fast, full, atol=1e-5) and torch.equal(counts, full_counts)
    assert torch.allclose(grad, model.transformer.embed.tokens.weight.grad, atol=1e-6)


def test_every_reference_gives_the_same_losses(bases, tmp_path, capsys):
    """A LoRA policy against (a) its base with the adapters off, (b) the same base loaded as `reference`
    (a frozen model), (c) (a)'s log-probs precomputed: the same losses at every step, ln 2 at the first."""
    data = data_files(tmp_path, preference_rows, conversational=True)
    lora = ["peft.method=lora", "peft.r=4", "peft.target=all-linear"]
    variants = {
        "off": [],
        "frozen": [f"reference={bases['gpt']}"],
        "precomputed": ["precompute_reference=true"],
    }
    losses = {}
    for name, extra in variants.items():
        code, out, err = dpo(capsys, tmp_path, bases["gpt"], *data, *lora, *extra, f"name={name}", steps=5)
        assert code == 0, err
        losses[name] = losses_by_step(tmp_path / "runs" / name)
        assert losses[name][1] == pytest.approx(LN2, abs=1e-6)
    assert "adapters off" in out or "lora modules off" in out
    for name in ("frozen", "precomputed"):
        assert all(abs(losses[name][s] - losses["off"][s]) < 1e-5 for s in losses["off"]), (name, losses)
    assert (tmp_path / "runs" / "precomputed" / "reference_logps.safetensors").is_file()


def test_precomputed_reference_equals_the_live_frozen_copy(bases, tmp_path, capsys):
    data = data_files(tmp_path, preference_rows)
    for name, extra in (("live", "precompute_reference=false"), ("stored", "precompute_reference=true")):
        code, _, err = dpo(
            capsys, tmp_path, bases["gpt"], *data, extra, f"name={name}", "eval.every=3", steps=6
        )
        assert code == 0, err
    live, stored = (tmp_path / "runs" / n for n in ("live", "stored"))
    assert all(
        abs(a - b) < 1e-5 for a, b in zip(losses_by_step(live).values(), losses_by_step(stored).values())
    )
    for a, b in zip(dev_rows(live), dev_rows(stored)):
        assert a["dev_loss"] == pytest.approx(b["dev_loss"], abs=1e-5)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")


@pytest.mark.parametrize("precompute", [False, True])
def test_resume_equals_uninterrupted(bases, tmp_path, capsys, precompute):
    data = [
        *data_files(tmp_path, preference_rows),
        "eval.every=3",
        "checkpoint.every=3",
        "checkpoint.keep_last=0",
        f"precompute_reference={str(precompute).lower()}",
    ]
    for name in ("whole", "split"):
        code, _, err = dpo(capsys, tmp_path, bases["gpt"], *data, f"name={name}", steps=6)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    shutil.rmtree(split / "checkpoints" / "step-00000006")
    stored = split / "reference_logps.safetensors"
    written = stored.stat().st_mtime_ns if precompute else None
    code, _, err = dpo(
        capsys, tmp_path, bases["gpt"], *data, "name=split", steps=6,
        flags=(f"--resume={split / 'checkpoints' / 'step-00000003'}",),
    )  # fmt: skip
    assert code == 0, err
    assert losses_by_step(whole) == losses_by_step(split)
    expected, resumed = final_weights(whole), final_weights(split)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    if precompute:
        assert stored.stat().st_mtime_ns == written  # read back, not computed again


@pytest.mark.parametrize(
    "options",
    [["loss_type=hinge"], ["loss_type=ipo", "beta=0.5"], ["rpo_alpha=1.0"], ["label_smoothing=0.1"]],
    ids=["hinge", "ipo", "rpo", "cdpo"],
)
def test_loss_types_run(bases, tmp_path, capsys, options):
    code, out, err = dpo(
        capsys, tmp_path, bases["gpt"], *data_files(tmp_path, preference_rows), *options, "name=t", steps=3
    )
    assert code == 0, err
    first = read_metrics(tmp_path / "runs" / "t")[1]
    if options[0] == "loss_type=hinge":
        assert first["loss"] == pytest.approx(1.0, abs=1e-6)  # relu(1 - β·0)
    if options[0] == "loss_type=ipo":
        assert first["loss"] == pytest.approx(1.0, abs=1e-6)  # (0 - 1 / (2·0.5))²
    if options[0] == "rpo_alpha=1.0":
        assert first["loss"] == pytest.approx(LN2 + first["nll"], abs=1e-5)


def test_hh_transcripts(bases, tmp_path, capsys):
    hh = data_files(tmp_path, hh_rows)
    code, out, err = dpo(
        capsys, tmp_path, bases["gpt"], *hh, "data.format=hh", "data.max_length=160", "name=hh", steps=2
    )
    assert code == 0, err
    assert last_json(out)["examples"] == {"train": 48, "dev": 16}


# ---- bad input: one error line, exit 2, no run folder ------------------------------------------------------
def bad_run(capsys, tmp: Path, base: Path, *overrides: str) -> str:
    code, _, err = dpo(capsys, tmp, base, *overrides, "name=bad")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp / "runs" / "bad").exists()
    return lines[0]


def test_a_row_missing_rejected(bases, tmp_path, capsys):
    rows = preference_rows(4, 0)
    del rows[2]["rejected"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(capsys, tmp_path, bases["gpt"], f"data.train={train}")
    assert "train.jsonl:3" in err and "'rejected'" in err


def test_identical_chosen_and_rejected(bases, tmp_path, capsys):
    rows = preference_rows(8, 0)
    rows[1]["rejected"] = rows[1]["chosen"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(capsys, tmp_path, bases["gpt"], f"data.train={train}", "data.identical=error")
    assert "train.jsonl:2" in err and "same text" in err and "data.identical=skip" in err
    code, out, err = dpo(capsys, tmp_path, bases["gpt"], f"data.train={train}", "name=skip", steps=1)
    assert code == 0, err
    assert last_json(out)["skipped"]["train"]["counts"] == {"chosen identical to rejected": 1}


def test_a_prompt_longer_than_the_context(bases, tmp_path, capsys):
    rows = preference_rows(8, 0)
    rows[3]["prompt"] = "how was the movie? " * 40
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(capsys, tmp_path, bases["gpt"], f"data.train={train}")
    assert "train.jsonl:4" in err and "data.max_length=64" in err and "data.max_prompt_length" in err
    code, out, err = dpo(
        capsys, tmp_path, bases["gpt"], f"data.train={train}", "data.on_error=skip", "name=skip", steps=1
    )
    assert code == 0, err
    assert last_json(out)["skipped"]["train"]["counts"] == {"prompt longer than the context": 1}


def test_a_reference_from_another_tokenizer(bases, tmp_path, capsys):
    data = data_files(tmp_path, preference_rows)
    err = bad_run(capsys, tmp_path, bases["gpt"], *data, f"reference={bases['other_vocab']}")
    assert "another tokenizer" in err and "reference" in err


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["data.format=ranked"], "DPO trains on pairs"),
        (["loss_type=hinge", "label_smoothing=0.1"], "sigmoid only"),
        (["peft.method=prefix"], "use lora"),
    ],
)
def test_bad_settings(bases, tmp_path, capsys, overrides, expected):
    err = bad_run(capsys, tmp_path, bases["gpt"], *data_files(tmp_path, preference_rows), *overrides)
    assert expected in err


def test_an_encoder_is_no_policy(bases, tmp_path, capsys):
    err = bad_run(capsys, tmp_path, bases["bert"], *data_files(tmp_path, preference_rows))
    assert "MaskedLM" in err and "causal LM" in err


# ---- the shipped recipes --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("recipe", SHIPPED, ids=[r.stem for r in SHIPPED])
def test_shipped_recipe_runs_on_its_own_data(recipe, shared_data, bases, tmp_path, capsys, monkeypatch):
    """Each recipe's own data and format, a tiny stand-in for its base (gpt-clm's checkpoint), few rows."""
    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository root
    written = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    assert written["data"]["train"].startswith("../shared/data/")
    overrides = [
        f"init_from={bases['gpt']}", f"out_dir={tmp_path / 'runs' / '{name}'}", "data.train_rows=40:56",
        "data.dev_rows=0:8", "data.max_length=128", "data.max_prompt_length=96", "train.steps=2",
        "epochs=null", "eval.every=0", "train.batch_size=4", "train.precision=fp32", "train.device=cpu",
        "train.threads=1", "log.tensorboard=false", "log.plot=false",
    ]  # fmt: skip
    from train_helpers import run_cli

    code, out, err = run_cli(["dpo", recipe, *overrides], capsys)
    assert code == 0, err
    result = last_json(out)
    assert result["step"] == 2 and result["examples"]["dev"] >= 7
    assert math.isfinite(result["dev"]["loss"])
    json.dumps(result)
