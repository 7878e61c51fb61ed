"""Every recipe in recipes/ runs a few steps on tiny sizes (a new recipe is covered automatically), its
checkpoint loads and resumes exactly, and the loss falls on a memorisable corpus."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import pytest
import torch

import train_helpers as h
from plmkit.config import load_config
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain


def _recipe_param(recipe: Path):
    return pytest.param(recipe, id=recipe.stem, marks=[])


RECIPE_PARAMS = [_recipe_param(r) for r in h.RECIPES]


def test_recipes_are_discovered():
    assert len(h.RECIPES) >= 11
    names = {r.stem for r in h.RECIPES}
    assert {"gpt-clm", "bert-mlm", "t5-span", "electra", "llama-clm"} <= names


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {"en": h.write_english(root / "en.txt", 30_000), "zh": h.write_chinese(root / "zh.txt")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpora):
    """recipe -> (config, result) of a 6-step tiny run with checkpoints at steps 3 and 6 (run once)."""
    done: dict[Path, tuple[RecipeConfig, dict]] = {}

    def run(recipe: Path):
        if recipe not in done:
            tmp = tmp_path_factory.mktemp(recipe.stem)
            corpus = corpora["zh" if h.is_chinese(recipe) else "en"]
            overrides = h.tiny_overrides(recipe, corpus, tmp, steps=6) + [
                "checkpoint.every=3",
                "checkpoint.keep_last=5",
                "model.dropout=0.1",
            ]
            config = load_config(RecipeConfig, recipe, overrides)
            done[recipe] = (config, pretrain(config, stream=io.StringIO()))
        return done[recipe]

    return run


@pytest.mark.parametrize("recipe", RECIPE_PARAMS)
def test_recipe_runs_on_tiny_sizes(recipe, tiny_run):
    from plmkit.io import load

    config, result = tiny_run(recipe)
    run_dir = Path(config.run_dir)
    assert result["step"] == 6
    rows = h.read_metrics(run_dir)
    assert result["tokens"] == rows[-2]["tokens"] > 0  # input tokens seen (seq2seq inputs are shorter)
    losses = h.losses_by_step(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert math.isfinite(result["val_loss"]) and math.isfinite(result["initial_val_loss"])
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    assert Path(result["checkpoint"]).name == "step-00000006"
    model, tokenizer = load(result["checkpoint"])  # a normal plmkit checkpoint
    assert tokenizer is not None and tokenizer.vocab_size == model.config.vocab_size


@pytest.mark.parametrize("recipe", RECIPE_PARAMS)
def test_recipe_resumes_exactly(recipe, tiny_run, tmp_path):
    """Resuming from the step-3 checkpoint replays steps 4-6 bit for bit (dropout on, fp32, CPU):
    sampler, objective, model (e.g. ELECTRA's sampler) and global RNG states all travel."""
    config, _ = tiny_run(recipe)
    original = Path(config.run_dir)
    copy = tmp_path / "resumed"
    shutil.copytree(original, copy)
    # a run folder resumes from its latest checkpoint only (an earlier one would leave step 6 beside a
    # second history): drop the later one, as a user rewinding a run would
    shutil.rmtree(copy / "checkpoints" / "step-00000006")
    overrides = h.tiny_overrides(recipe, Path(config.data.sources[0].path), tmp_path, steps=6) + [
        "checkpoint.every=3",
        "checkpoint.keep_last=5",
        "model.dropout=0.1",
        f"data.cache_dir={config.data.cache_dir}",
        f"out_dir={copy}",
        f"resume={copy / 'checkpoints' / 'step-00000003'}",
    ]
    resumed = pretrain(load_config(RecipeConfig, recipe, overrides), stream=io.StringIO())
    want = [r for r in h.read_metrics(original)]
    got = [r for r in h.read_metrics(copy)]
    keys = ("step", "loss", "lr", "tokens", "skipped_steps", "val_loss")
    assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in want]
    assert resumed["step"] == 6


MEMORISE = {
    "clm": ("gpt-clm", []),
    # MLM on a tokenizer family with an eos token (see test_recipe_runs_on_tiny_sizes for BERT's own)
    "mlm": ("bert-mlm", ["tokenizer.family=roberta", "tokenizer.kind=bpe"]),
    "t5_span": ("t5-span", []),
}


@pytest.mark.parametrize("objective", list(MEMORISE))
def test_loss_falls_on_a_memorisable_corpus(objective, tmp_path):
    name, extra = MEMORISE[objective]
    recipe = h.ROOT / "recipes" / f"{name}.yaml"
    corpus = h.write_memorisable(tmp_path / "memorise.txt")
    overrides = h.tiny_overrides(recipe, corpus, tmp_path, steps=60, vocab=300) + [
        "optim.lr=3e-3",
        "schedule.kind=constant",
        "model.dropout=0.0",
        *extra,
    ]
    config = load_config(RecipeConfig, recipe, overrides)
    assert config.objective.name == objective
    result = pretrain(config, stream=io.StringIO())
    losses = h.losses_by_step(Path(config.run_dir))
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(56, 61)) / 5
    assert last < first - 0.5, f"{objective}: loss {first:.3f} -> {last:.3f} did not fall"
    assert result["val_loss"] < result["initial_val_loss"] - 0.5


def test_bf16_autocast_with_accumulation_and_checkpointing_tracks_fp32(tmp_path, corpora):
    """bf16 autocast on CPU (the default where the CPU has AMX) trains like fp32."""
    recipe = h.ROOT / "recipes" / "gpt-clm.yaml"
    losses = {}
    for precision in ("fp32", "bf16"):
        overrides = h.tiny_overrides(recipe, corpora["en"], tmp_path, steps=5) + [
            f"out_dir={tmp_path / precision}",
            "train.accumulation=2",
            "train.gradient_checkpointing=true",
            f"train.precision={precision}",  # after COMMON's fp32
        ]
        config = load_config(RecipeConfig, recipe, overrides)
        assert config.train.precision == precision
        pretrain(config, stream=io.StringIO())
        losses[precision] = h.losses_by_step(tmp_path / precision)
    for step in range(1, 6):
        assert losses["bf16"][step] == pytest.approx(losses["fp32"][step], abs=0.05), step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda(precision, tmp_path, corpora):
    """fp16 trains with a GradScaler (its state travels in the checkpoint); bf16 with plain autocast."""
    from plmkit.train.checkpoint import load_training_state

    recipe = h.ROOT / "recipes" / "gpt-clm.yaml"
    overrides = h.tiny_overrides(recipe, corpora["en"], tmp_path, steps=4) + [
        "train.device=cuda",
        f"train.precision={precision}",
        "train.accumulation=2",
    ]
    config = load_config(RecipeConfig, recipe, overrides)
    result = pretrain(config, stream=io.StringIO())
    losses = h.losses_by_step(Path(config.run_dir))
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    assert math.isfinite(result["val_loss"])
    state, _ = load_training_state(Path(result["checkpoint"]))
    assert bool(state["scaler"]) == (precision == "fp16")  # an enabled scaler has a scale to save
