"""Every shipped recipe starts and trains on its own data: the files its data section names under
../shared/data, read as the recipe says (format, documents), with only the model, steps and evaluation made
tiny. The other recipe tests swap in a small corpus, so they cannot see a recipe whose data does not load.
recipes/demo.yaml has its own tests (it trains on built-in text when it has no sources)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

import train_helpers as h
from plmkit.config import load_config
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain

SHIPPED = [r for r in h.RECIPES if r.stem != "demo"]


def test_every_shipped_recipe_is_covered():
    assert len(SHIPPED) >= 12
    assert all(h.recipe_data(r)["data"]["sources"] for r in SHIPPED)  # each names its own data


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.stem) for r in SHIPPED])
def test_recipe_trains_on_its_own_data(recipe, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(h.ROOT)  # recipes name their data relative to the repository root
    overrides = [*h.tiny_sizes(recipe, tmp_path, steps=2, vocab=500), "data.block_size=64"]
    if h.recipe_data(recipe).get("init_from"):  # its input (another run's output), not its data
        overrides.append(f"init_from={h.tiny_base(recipe, overrides, tmp_path)}")
    config = load_config(RecipeConfig, recipe, overrides)
    written = h.recipe_data(recipe)["data"]
    assert [s.path for s in config.data.sources] == [s["path"] for s in written["sources"]]
    assert all(Path(s.path).resolve().is_relative_to(shared_data.resolve()) for s in config.data.sources)

    stream = io.StringIO()
    result = pretrain(config, stream=stream)
    assert result["step"] == 2 and math.isfinite(result["val_loss"])
    losses = h.losses_by_step(Path(config.run_dir))
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    # the start of the run names every source with its documents, tokens and mean document length
    printed = stream.getvalue()
    for source in written["sources"]:
        assert f"  train {source['path']}: " in printed and " tokens per document" in printed, printed
    for source in written.get("validation", []):
        assert f"  validation {source['path']}: " in printed, printed
    if not written.get("validation"):
        assert "  validation: the last 5% of the blocks of " in printed, printed


def test_new_sources_keep_the_recipes_validation_files_and_the_run_names_them(
    shared_data, tmp_path, monkeypatch
):
    """gpt-clm validates on WikiText files of its own; a user who changes data.sources alone still
    validates on them, and the start of the run says so (and what a document is in the new source)."""
    monkeypatch.chdir(h.ROOT)
    recipe = h.ROOT / "recipes" / "gpt-clm.yaml"
    corpus = h.write_english(tmp_path / "mine.txt", 20_000)
    overrides = [*h.tiny_sizes(recipe, tmp_path, steps=1, vocab=300), f"data.sources=[{{path: {corpus}}}]"]
    stream = io.StringIO()
    pretrain(load_config(RecipeConfig, recipe, overrides), stream=stream)
    lines = stream.getvalue().splitlines()
    documents = sum(1 for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip())
    assert any(line.startswith(f"  train {corpus}: {documents:,} documents, ") for line in lines), lines
    assert any(
        line.startswith("  validation ../shared/data/wikitext2/tokens.valid.txt: 2,461 documents, ")
        for line in lines
    ), lines
