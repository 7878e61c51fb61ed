"""`plm eval CKPT --data FILE`: loss / perplexity JSON for a trained checkpoint and for a Hugging Face
folder holding the same weights; and validation during training sees the current weights."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

import train_helpers as h
from plmkit.config import load_config
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GPT trained for 20 steps: (config, result, held-out text file)."""
    tmp = tmp_path_factory.mktemp("eval")
    corpus = h.write_english(tmp / "train.txt", 40_000)
    held_out = tmp / "held_out.txt"
    held_out.write_text(h.english_text(48_000)[40_000:], encoding="utf-8")
    overrides = h.tiny_overrides(GPT, corpus, tmp, steps=20) + ["optim.lr=3e-3", "eval.batches=4"]
    config = load_config(RecipeConfig, GPT, overrides)
    return config, pretrain(config, stream=io.StringIO()), held_out


@pytest.fixture(autouse=True)
def token_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))  # `plm eval` builds a token store


def plm_eval(capsys, checkpoint, data, *extra) -> dict:
    code, out, err = h.run_cli(["eval", checkpoint, "--data", data, "--block-size", "32", *extra], capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_plm_eval_reports_loss_and_perplexity(trained, capsys):
    config, result, held_out = trained
    report = plm_eval(capsys, result["checkpoint"], held_out)
    assert report["checkpoint"] == result["checkpoint"] and report["data"] == str(held_out)
    assert math.isfinite(report["loss"]) and 0 < report["loss"] < math.log(config.tokenizer.vocab_size)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["blocks"] > 0
    assert report["tokens"] == report["blocks"] * 31  # CLM: block_size - 1 targets per block
    # the trained model beats its own initial validation perplexity
    assert report["perplexity"] < result["initial_val_ppl"]


def test_plm_eval_max_batches_and_batch_size(trained, capsys):
    _, result, held_out = trained
    report = plm_eval(capsys, result["checkpoint"], held_out, "--batch-size", "2", "--max-batches", "3")
    assert report["blocks"] == 6 and report["tokens"] == 6 * 31


def test_plm_eval_matches_the_training_validation_loss(trained, capsys, tmp_path):
    """The run's final val_loss (held-out blocks of the training corpus) is what `plm eval` reports
    for those same blocks."""
    from plmkit.io import load
    from plmkit.recipes.common import build_run

    config, result, _ = trained
    run = build_run(config)
    blocks = [b for batch in run.val_batches(config.eval.batches) for b in batch]
    model, tokenizer = load(result["checkpoint"])
    assert tokenizer.vocab_size == run.tokenizer.vocab_size
    text = tmp_path / "val_blocks.txt"  # the blocks decoded back to text, one document each
    text.write_text(
        "\n".join(tokenizer.decode(b.tolist()).replace("\n", " ") for b in blocks), encoding="utf-8"
    )
    report = plm_eval(capsys, result["checkpoint"], text, "--batch-size", "8")
    assert report["loss"] == pytest.approx(result["val_loss"], abs=0.5)  # re-tokenised text: close, not equal


def test_plm_eval_on_a_hugging_face_folder(trained, capsys, tmp_path):
    from plmkit.io import load
    from plmkit.model.hf import save_hf

    _, result, held_out = trained
    model, tokenizer = load(result["checkpoint"])
    hf_dir = save_hf(model, tokenizer, tmp_path / "hf")
    assert (Path(hf_dir) / "config.json").is_file()
    ours = plm_eval(capsys, result["checkpoint"], held_out)
    theirs = plm_eval(capsys, hf_dir, held_out)
    assert theirs["tokens"] == ours["tokens"]
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-4)


def test_plm_eval_bad_input(trained, capsys, tmp_path):
    _, result, held_out = trained
    code, out, err = h.run_cli(["eval", tmp_path / "nope", "--data", held_out], capsys)
    assert code == 2 and err.startswith("error: ") and "nope" in err and "Traceback" not in err
    code, out, err = h.run_cli(["eval", result["checkpoint"], "--data", tmp_path / "missing.txt"], capsys)
    assert code == 2 and err.startswith("error: ") and "missing.txt" in err and "Traceback" not in err


# ---- validation during training sees the weights the optimizer just changed ---------------------


def test_no_grad_forward_after_an_optimizer_step_uses_the_new_weights():
    from plmkit.model import ModelConfig, build_model
    from plmkit.train.config import OptimConfig
    from plmkit.train.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, d_ff=32, max_positions=16)
    )
    optimizer = build_optimizer(model, OptimConfig(lr=0.1), torch.device("cpu"))
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        model(x)  # e.g. the validation pass before training
    model(x, labels=x).loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = model(x).logits
    assert torch.allclose(after, model(x).logits.detach(), atol=1e-6)  # with grad: the plain path


def test_final_validation_loss_equals_a_fresh_evaluation_of_the_checkpoint(tmp_path):
    from plmkit.recipes.common import build_run
    from plmkit.recipes.pretrain import evaluate
    from plmkit.weights import load_weights_into

    corpus = h.write_english(tmp_path / "train.txt", 20_000)
    overrides = h.tiny_overrides(GPT, corpus, tmp_path, steps=5) + ["train.batch_size=1", "optim.lr=1e-2"]
    config = load_config(RecipeConfig, GPT, overrides)
    result = pretrain(config, stream=io.StringIO())  # validation batches of 1 x 32 rows
    fresh = build_run(config)
    load_weights_into(fresh.model, Path(result["checkpoint"]) / "model.safetensors")
    assert evaluate(fresh)["val_loss"] == pytest.approx(result["val_loss"], abs=1e-6)
