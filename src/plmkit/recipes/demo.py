"""`plm demo` / `make demo`: the quickstart. Train a byte-level BPE tokenizer and a small GPT on real
English text for about three minutes on a laptop CPU, then generate from it. Nothing is downloaded.

The settings are the recipe `demo.yaml` beside this module (package data, so an installed plmkit finds
it; the repository's recipes/demo.yaml links to it). The default corpus is the Python language reference
that ships with every CPython (`pydoc_data.topics`). `plm demo data=PATH` trains on your own UTF-8 text
instead, and any recipe key can be overridden the same way (`plm demo train.steps=100 model.n_layer=2`).
The run itself is the ordinary pre-training recipe (plmkit.recipes.pretrain).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from plmkit.config import load_config, to_dict
from plmkit.data.sources import SourceSpec
from plmkit.errors import DataError
from plmkit.recipes.config import RecipeConfig

DEMO_RECIPE = "demo.yaml"  # package data of plmkit.recipes
PROMPTS = ("The for statement", "A class definition")


def write_default_corpus(run_dir: Path) -> Path:
    """The Python language reference of this interpreter, one topic per document (blank-line separated)."""
    from pydoc_data import topics

    path = run_dir / "corpus.txt"
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(topics.topics[name].replace("\n\n", "\n") for name in sorted(topics.topics))
    path.write_text(text, encoding="utf-8")
    return path


def demo_config(overrides: list[str]) -> RecipeConfig:
    """demo.yaml with `overrides` applied; `data=PATH` is a shortcut for the one data source."""
    data_path = None
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "data":
            data_path = value
        else:
            rest.append(item)
    with resources.as_file(resources.files(__package__) / DEMO_RECIPE) as recipe:
        config = load_config(RecipeConfig, recipe, rest)
    if data_path is not None:
        if not Path(data_path).exists():
            raise DataError(f"data={data_path}: no such file or folder")
        config.data.sources = [SourceSpec(data_path)]
    elif not config.data.sources:
        config.data.sources = [SourceSpec(str(write_default_corpus(Path(config.run_dir))))]
    return config


def run_demo(overrides: list[str] | None = None) -> dict[str, Any]:
    from plmkit.generation import generate
    from plmkit.io import load
    from plmkit.recipes.pretrain import pretrain

    config = demo_config(list(overrides or []))
    print(f"plmkit quickstart: {config.data.sources[0].path}")
    result = pretrain(config)
    model, tokenizer = load(result["checkpoint"])
    before, after = result.get("initial_val_ppl"), result.get("val_ppl")
    if before and after:
        print(
            f"validation perplexity: {before:,.1f} before training -> {after:,.1f} after ({before / after:.1f}x lower)"
        )
    print(f"checkpoint: {result['checkpoint']}")
    if "loss_curve" in result:
        print(f"loss curve: {result['loss_curve']}")
    for prompt in PROMPTS:
        text = generate(
            model, tokenizer, prompt, max_new_tokens=48, do_sample=True, top_k=40, seed=config.seed
        )
        print(f"--- sample ---\n{prompt}{text}")
    print(f'try: plm generate --model {result["checkpoint"]} --prompt "The while statement" --sample')
    return {**result, "config": to_dict(config)}
