"""The quickstart (`plm demo` / `make demo`), shortened: a byte-level BPE tokenizer and a small GPT on
the Python language reference (pydoc_data.topics), validation perplexity at least 5x lower after
training, metrics.jsonl rows, the loss curve (when matplotlib is installed), samples printed."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import train_helpers as h
from plmkit.recipes.demo import DEMO_RECIPE, PROMPTS, demo_config, run_demo

# ~8 s on one core: 250 steps of 32 x 32 tokens on a 1-layer, 64-wide GPT (the real demo: 4 x 192, 600 steps)
SHORT = [
    "model.d_model=64",
    "model.n_layer=1",
    "model.n_head=4",
    "model.d_ff=256",
    "tokenizer.vocab_size=1000",
    "data.block_size=32",
    "train.batch_size=32",
    "train.steps=250",
    "optim.lr=3e-3",
    "schedule.warmup_steps=10",
    "eval.every=125",
    "eval.batches=8",
    "log.every=10",
    "checkpoint.every=0",
    "train.precision=fp32",
    "train.threads=1",
    "log.tensorboard=false",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    overrides = [f"out_dir={tmp / 'run'}", f"data.cache_dir={tmp / 'cache'}", *SHORT]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_demo(overrides)
    return result, printed.getvalue(), tmp / "run"


def test_quickstart_validation_perplexity_drops_5x(demo):
    result, printed, run_dir = demo
    assert result["step"] == 250
    before, after = result["initial_val_ppl"], result["val_ppl"]
    assert before > 500  # an untrained model is about as unsure as the vocabulary is large
    assert before / after >= 5, f"validation perplexity {before:.1f} -> {after:.1f}"
    assert f"validation perplexity: {before:,.1f} before training -> {after:,.1f} after" in printed


def test_quickstart_trains_on_the_python_language_reference(demo):
    from pydoc_data import topics

    result, printed, run_dir = demo
    corpus = Path(result["config"]["data"]["sources"][0]["path"])
    # written into the data cache folder: the run folder must be empty for a new run
    assert corpus.parent == run_dir.parent / "cache" and corpus.name.startswith("python-reference-")
    text = corpus.read_text(encoding="utf-8")
    assert topics.topics["for"].split("\n")[0] in text
    assert f"plmkit quickstart: {corpus}" in printed
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()


def test_quickstart_metrics_rows(demo):
    _, _, run_dir = demo
    rows = h.read_metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(10, 251, 10))
    for row in train_rows:
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(row)
        assert math.isfinite(row["loss"]) and row["lr"] > 0 and row["tokens_per_s"] > 0
    val_steps = [r["step"] for r in rows if "val_loss" in r]
    assert val_steps == [0, 125, 250]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_quickstart_checkpoint_and_samples(demo):
    from plmkit.io import load

    result, printed, _ = demo
    checkpoint = Path(result["checkpoint"])
    assert checkpoint.name == "step-00000250"
    model, tokenizer = load(checkpoint)
    assert type(model).__name__ == "CausalLM" and tokenizer.vocab_size == 1000
    for prompt in PROMPTS:
        assert f"--- sample ---\n{prompt}" in printed
    assert f"plm generate --model {checkpoint}" in printed


def test_quickstart_loss_curve(demo):
    result, printed, run_dir = demo
    if importlib.util.find_spec("matplotlib") is None:
        assert "loss_curve" not in result and not (run_dir / "loss_curve.png").exists()
        pytest.skip("matplotlib is not installed: no loss curve (and no error)")
    png = run_dir / "loss_curve.png"
    assert result["loss_curve"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"loss curve: {png}" in printed


def test_the_full_demo_settings_are_the_documented_ones():
    """The shortened run above only overrides sizes; the real quickstart is a few-million-parameter GPT."""
    config = demo_config(["data=" + __file__])  # data=PATH: no corpus written
    assert config.data.sources[0].path == __file__
    assert config.data.sources[0].format == "txt"  # "your own text": a .py file is read as plain text
    assert demo_config(["data=" + str(h.ROOT / "README.md")]).data.sources[0].format == "txt"
    assert config.objective.name == "clm" and config.tokenizer.kind == "bpe"
    m = h.recipe_data(h.ROOT / "recipes" / DEMO_RECIPE)["model"]
    n_params = m["n_layer"] * 12 * m["d_model"] ** 2 + 4096 * m["d_model"]
    assert 1e6 < n_params < 1e7


def test_demo_bad_input(capsys, tmp_path):
    code, _, err = h.run_cli(["demo", f"data={tmp_path / 'my-text.txt'}"], capsys)
    assert code == 2 and err.startswith("error: ") and "my-text.txt" in err and "Traceback" not in err
    code, _, err = h.run_cli(["demo", "train.step=5", f"out_dir={tmp_path}"], capsys)
    assert code == 2 and 'did you mean "train.steps"' in err and "Traceback" not in err


def test_the_demo_recipe_ships_inside_the_package_and_is_the_repository_one():
    """plm demo reads src/plmkit/recipes/demo.yaml (package data: an installed plmkit has it); the
    repository's recipes/demo.yaml, beside the other recipes, is a link to that file."""
    import plmkit.recipes

    shipped = Path(plmkit.recipes.__file__).parent / DEMO_RECIPE
    listed = h.ROOT / "recipes" / DEMO_RECIPE
    assert listed.resolve() == shipped.resolve()
    assert listed.read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8")


TINY = [
    "model.d_model=32",
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_ff=64",
    "tokenizer.vocab_size=300",
    "data.block_size=32",
    "train.batch_size=4",
    "train.steps=3",
    "schedule.warmup_steps=0",
    "eval.every=0",
    "eval.batches=1",
    "checkpoint.every=0",
    "train.precision=fp32",
    "train.threads=1",
    "log.tensorboard=false",
    "log.plot=false",
]


def test_demo_then_demo_with_data_gives_two_working_models(tmp_path, monkeypatch, capsys):
    """The README's `make demo` then `make demo ARGS="data=..."`: data=PATH trains in runs/demo-<name>, so
    both models work; a second plain demo is refused (no --resume offered) and changes nothing."""
    from hashing import folder_hashes
    from plmkit.io import load

    monkeypatch.chdir(tmp_path)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    mine = h.write_english(tmp_path / "my text.txt", 20_000)
    first = run_demo([*TINY, cache])
    second = run_demo([f"data={mine}", *TINY, cache])
    assert first["checkpoint"] == str(Path("runs/demo/checkpoints/step-00000003"))
    assert second["checkpoint"] == str(Path("runs/demo-my-text/checkpoints/step-00000003"))
    for result in (first, second):
        load(result["checkpoint"])
    before = folder_hashes(Path("runs/demo"))
    code, _, err = h.run_cli(["demo", *TINY, cache], capsys)
    assert code == 2 and "runs/demo already holds a run (checkpoints up to step-00000003)" in err, err
    assert "--resume" not in err and "name=NAME" in err and "--overwrite" in err
    assert folder_hashes(Path("runs/demo")) == before
    assert demo_config([f"data={mine}", "name=other"]).run_dir == "runs/other"  # the user's name wins
