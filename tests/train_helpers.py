"""Shared helpers of the training-recipe tests (tests/test_train_*.py): tiny corpora written into
tmp_path, overrides that shrink any recipe to a tiny model, and an in-process `plm` runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tiny import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SRC = ROOT / "src"

# Recipe tests run on one thread (conftest.py sets it for this process; subprocesses get train.threads=1).
COMMON = [
    "train.precision=fp32",
    "train.device=cpu",
    "train.threads=1",
    "log.tensorboard=false",
    "log.plot=false",
]

ZH_WORDS = (
    "今天 天气 真好 我们 一起 出去 玩 吧 明天 下雨 他们 学校 老师 学生 喜欢 读书 写字 北京 上海 "
    "城市 公园 朋友 吃饭 喝茶 电脑 手机 工作 时间 问题 发展 经济 社会 文化 历史 音乐 电影 春天 "
    "夏天 秋天 冬天 山水 河流 花草 树木 早上 晚上 非常 已经 开始 知道 觉得 应该 可以 没有"
).split()


def english_text(n_chars: int) -> str:
    """Real English prose: the Python language reference that ships with CPython (pydoc_data)."""
    from pydoc_data import topics

    text = "\n".join(topics.topics[name].replace("\n\n", "\n") for name in sorted(topics.topics))
    return text[:n_chars]


def write_english(path: Path, n_chars: int = 40_000) -> Path:
    path.write_text(english_text(n_chars), encoding="utf-8")
    return path


def write_chinese(path: Path, n_lines: int = 300, seed: int = 0) -> Path:
    """Generated Chinese sentences (common words, so jieba segments them and pypinyin knows them)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(ZH_WORDS) for _ in range(rng.randint(6, 14))]
        lines.append("".join(words) + rng.choice("。！？"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_memorisable(path: Path, repeats: int = 200) -> Path:
    """One short sentence repeated: any objective can learn it in a few dozen steps."""
    line = "the quick brown fox jumps over the lazy dog and the cat sleeps in the warm sun"
    path.write_text("\n".join([line] * repeats) + "\n", encoding="utf-8")
    return path


def recipe_data(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text(encoding="utf-8"))


def is_chinese(recipe: Path) -> bool:
    data = recipe_data(recipe)
    objective = (data.get("objective") or {}).get("name", "clm")
    return recipe.stem.endswith("-zh") or objective in ("wwm", "spell")


def tiny_overrides(recipe: Path, corpus: Path, tmp_path: Path, steps: int = 3, vocab: int = 400) -> list[str]:
    """Overrides that turn any recipe into a tiny, fast run on `corpus` inside tmp_path. A recipe that
    continues from a checkpoint (init_from, e.g. lora-clm) gets a tiny base checkpoint instead."""
    out = _tiny(recipe, corpus, tmp_path, steps, vocab)
    if recipe_data(recipe).get("init_from"):
        base = tiny_base(recipe, out, tmp_path)
        # the base has the tiny sizes; the run takes model and tokenizer from it (and would warn that
        # its own model / tokenizer settings are ignored)
        out = [o for o in out if not o.startswith(("model.", "tokenizer."))] + [f"init_from={base}"]
    return out


def tiny_base(recipe: Path, overrides: list[str], tmp_path: Path) -> Path:
    """A tiny model of the recipe's sizes (untrained) with a tokenizer trained on its data, saved as a
    plmkit checkpoint: the base of an init_from recipe, whose real base is another run's output. The
    same inputs give the same checkpoint (a resumed run must see the same tokenizer)."""
    import torch

    from plmkit.config import load_config
    from plmkit.io import save
    from plmkit.model import build_model
    from plmkit.recipes.common import build_model_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.inputs import build_tokenizer

    base = tmp_path / "tiny-base"
    if not (base / "plmkit.json").is_file():
        config = load_config(RecipeConfig, recipe, [*overrides, "init_from=null"])
        tokenizer = build_tokenizer(config, tmp_path / "tiny-base-run")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(build_model_config(config, tokenizer))
        save(model, tokenizer, base)
    return base


def _tiny(recipe: Path, corpus: Path, tmp_path: Path, steps: int, vocab: int) -> list[str]:
    return [
        *tiny_sizes(recipe, tmp_path, steps, vocab),
        f"data.sources=[{{path: {json.dumps(str(corpus))}}}]",
        "data.validation=[]",
        "data.validation_fraction=0.1",
        "data.block_size=32",
    ]


def tiny_sizes(recipe: Path, tmp_path: Path, steps: int = 3, vocab: int = 400) -> list[str]:
    """Overrides that shrink any recipe's model, steps and evaluation, with its cache and run folder in
    tmp_path; its data sources stay as they are."""
    data = recipe_data(recipe)
    model = data.get("model") or {}
    out = [
        f"model.n_layer={1}",
        "model.d_model=32",
        "model.n_head=2",
        "model.d_ff=64",
        f"tokenizer.vocab_size={vocab}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"out_dir={tmp_path / 'runs' / '{name}'}",
        f"train.steps={steps}",
        "train.batch_size=8",
        "train.accumulation=1",
        "schedule.warmup_steps=0",
        "eval.every=0",
        "eval.batches=2",
        "checkpoint.every=0",
        "log.every=1",
        *COMMON,
    ]
    if "head_dim" in model:  # T5 decouples head_dim from d_model / n_head
        out.append("model.head_dim=16")
    if "n_kv_head" in model:
        out.append("model.n_kv_head=1")
    if "n_decoder_layer" in model:
        out.append("model.n_decoder_layer=1")
    if "max_positions" in model:
        out.append("model.max_positions=64")
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`plm ARGV` in this process: (exit code, stdout, stderr)."""
    from plmkit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line still being written
            break
    return rows


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}
