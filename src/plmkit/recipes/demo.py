"""`plm demo` / `make demo`: the quickstart. Train a byte-level BPE tokenizer and a small GPT on real
English text for about three minutes on a laptop CPU, then generate from it. Nothing is downloaded.

The settings are the recipe `demo.yaml` beside this module (package data, so an installed plmkit finds
it; the repository's recipes/demo.yaml links to it). The default corpus is the Python language reference
that ships with every CPython (`pydoc_data.topics`), written once into the data cache folder (not the run
folder, which a new run needs empty). `plm demo data=PATH` trains on your own UTF-8 text instead, in its
own run folder runs/demo-<file name> (unless name= or out_dir= is given), and any recipe key can be
overridden the same way (`plm demo train.steps=100 model.n_layer=2`).

The run itself is the ordinary pre-training recipe (plmkit.recipes.pretrain), with its run-folder rules
(plmkit.recipes.runs): a second `plm demo` into the same folder is refused unless `--overwrite` (which
moves the old folder aside) or another `name=`.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from plmkit.config import load_config, to_dict
from plmkit.data.sources import SourceSpec, file_format
from plmkit.errors import DataError
from plmkit.files import atomic_file, make_folder
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.runs import RunFolderBusy

DEMO_RECIPE = "demo.yaml"  # package data of plmkit.recipes
PROMPTS = ("The for statement", "A class definition")


def write_default_corpus(folder: Path) -> Path:
    """The Python language reference of this interpreter, one paragraph per line (a line is a document),
    as `folder`/python-reference-X.Y.txt (written once, atomically: the file is an input of later runs)."""
    from pydoc_data import topics

    path = folder / f"python-reference-{sys.version_info.major}.{sys.version_info.minor}.txt"
    if path.is_file():
        return path
    make_folder(folder, "data cache folder")
    text = "\n".join(topics.topics[name].replace("\n\n", "\n") for name in sorted(topics.topics))
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
    return path


def run_name(data_path: str) -> str:
    """The demo's run name for data=PATH: demo-<file or folder name>, so it does not meet the default run."""
    stem = Path(data_path.rstrip("/")).stem or "data"
    return "demo-" + (re.sub(r"[^\w.-]+", "-", stem).strip("-") or "data")


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
    named = any(item.partition("=")[0] in ("name", "out_dir") for item in rest)
    if data_path is not None and not named:
        rest.insert(0, f"name={run_name(data_path)}")  # the user's own name= / out_dir= win
    with resources.as_file(resources.files(__package__) / DEMO_RECIPE) as recipe:
        config = load_config(RecipeConfig, recipe, rest)
    if data_path is not None:
        if not Path(data_path).exists():
            raise DataError(f"data={data_path}: no such file or folder")
        # data=PATH is "your own text": a file of an unknown type (a .py, .md, .log) is read as plain text
        plain = Path(data_path).is_file() and file_format(Path(data_path)) is None
        config.data.sources = [SourceSpec(data_path, format="txt" if plain else None)]
    elif not config.data.sources:
        from plmkit.data import default_cache_dir

        cache = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
        config.data.sources = [SourceSpec(str(write_default_corpus(cache)))]
    return config


def run_demo(overrides: list[str] | None = None) -> dict[str, Any]:
    from plmkit.generation import generate
    from plmkit.io import load
    from plmkit.recipes.pretrain import pretrain

    config = demo_config(list(overrides or []))
    print(f"plmkit quickstart: {config.data.sources[0].path}")
    try:
        result = pretrain(config)
    except RunFolderBusy as busy:  # `plm demo` has no --resume: offer what it has
        raise RunFolderBusy(busy.run_dir, busy.summary, resumable=False) from None
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
