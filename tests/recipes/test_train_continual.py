"""Continual pre-training: `init_from` starts a run from a plmkit or Hugging Face checkpoint (with its
tokenizer) and keeps training it on a new corpus with the same objective."""

from __future__ import annotations

import io

import pytest

import train_helpers as h
from plmkit.config import load_config
from plmkit.errors import ConfigError
from plmkit.evaluate import evaluate_loss
from plmkit.io import load
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("continual")
    corpus = h.write_english(tmp / "old.txt", 30_000)
    config = load_config(RecipeConfig, GPT, h.tiny_overrides(GPT, corpus, tmp, steps=15) + ["optim.lr=3e-3"])
    return tmp, pretrain(config, stream=io.StringIO())


def _continue(tmp, init_from, name):
    new_corpus = tmp / f"{name}.txt"  # new text the first run never saw
    new_corpus.write_text(h.english_text(60_000)[30_000:], encoding="utf-8")
    overrides = h.tiny_overrides(GPT, new_corpus, tmp, steps=5) + [f"init_from={init_from}", f"name={name}"]
    overrides = [o for o in overrides if not o.startswith("tokenizer.vocab_size")]
    return load_config(RecipeConfig, GPT, overrides), new_corpus


@pytest.mark.parametrize("source", ["plmkit", "huggingface"])
def test_continual_pretraining_starts_from_the_checkpoint(first_run, source, tmp_path):
    from plmkit.model.hf import save_hf

    tmp, result = first_run
    start = result["checkpoint"]
    if source == "huggingface":
        model, tokenizer = load(start)
        save_hf(model, tokenizer, tmp_path / "hf")
        start = str(tmp_path / "hf")
    config, new_corpus = _continue(tmp, start, f"continued-{source}")
    base, tokenizer = load(start)
    before = evaluate_loss(base, tokenizer, str(new_corpus), block_size=32, max_batches=2)
    out = pretrain(config, stream=io.StringIO())
    # the run's first validation is the checkpoint's own loss on the new data (same weights, same tokenizer)
    assert out["initial_val_loss"] == pytest.approx(_first_val_loss(config), abs=1e-6)
    assert out["initial_val_loss"] < _random_init_loss(config, tokenizer.vocab_size) - 0.3  # trained weights
    continued, continued_tok = load(out["checkpoint"])
    assert continued_tok.vocab_size == tokenizer.vocab_size
    assert type(continued).__name__ == "CausalLM"
    after = evaluate_loss(continued, continued_tok, str(new_corpus), block_size=32, max_batches=2)
    assert after["loss"] < before["loss"]  # it kept learning on the new corpus


def _first_val_loss(config) -> float:
    rows = h.read_metrics(h.Path(config.run_dir))
    return next(r["val_loss"] for r in rows if r["step"] == 0)


def _random_init_loss(config, vocab_size: int) -> float:
    import math

    return math.log(vocab_size)  # an untrained model sits near log(V)


def test_init_from_with_another_tokenizer_is_refused(first_run, tmp_path):
    tmp, result = first_run
    corpus = h.write_english(tmp_path / "c.txt", 20_000)
    overrides = h.tiny_overrides(GPT, corpus, tmp_path, steps=2, vocab=300) + [
        f"init_from={result['checkpoint']}"
    ]
    config = load_config(RecipeConfig, GPT, overrides)
    config.tokenizer.path = None
    other = tmp_path / "tok"
    from plmkit.tokenizer import Tokenizer

    Tokenizer.train([corpus.read_text()], kind="bpe", vocab_size=300).save(other)
    config.tokenizer.path = str(other)
    with pytest.raises(ConfigError, match="vocab_size"):
        pretrain(config, stream=io.StringIO())


def test_a_bf16_init_checkpoint_trains_fp32_master_weights(first_run, tmp_path):
    """A checkpoint saved in bf16 used as init_from with train.precision=fp32 trains fp32 parameters (it
    used to train bf16 ones while the run reported fp32); the saved result is fp32 too."""
    import torch

    from plmkit.io import save
    from plmkit.recipes.common import build_run

    tmp, result = first_run
    model, tokenizer = load(result["checkpoint"])
    save(model.to(torch.bfloat16), tokenizer, tmp_path / "bf16")
    config, _ = _continue(tmp, tmp_path / "bf16", "from-bf16")
    config.train.precision = "fp32"
    run = build_run(config)
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}
    assert run.precision.name == "fp32"
    trained = pretrain(config, stream=io.StringIO())
    model, _ = load(trained["checkpoint"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
