"""Tiny bases and preference files for the `plm reward` / `plm dpo` tests: a GPT-2-layout causal LM with a
byte-level BPE tokenizer (eos, pad), the fine-tuning tests' tiny BERT, and learnable preference rows (the
chosen answer praises, the rejected one pans)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from finetune_helpers import NEGATIVE, POSITIVE, write_jsonl

from train_helpers import COMMON, english_text, run_cli

TOPICS = "movie film story song book show play game".split()


def save_gpt(folder: Path, seed: int = 0, vocab_size: int = 320) -> Path:
    """A tiny untrained GPT-2-layout causal LM (eos <|endoftext|>, pad <|pad|>), as a plmkit checkpoint."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer

    if (folder / "plmkit.json").is_file():
        return folder
    words = " ".join(POSITIVE + NEGATIVE + TOPICS)
    texts = [english_text(8_000), words * 20, "### Instruction:\n### Response:\n" * 20]
    tokenizer = Tokenizer.train(texts, kind="bpe", vocab_size=vocab_size, family="gpt2")
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=2, d_ff=64,
        max_positions=256, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


def preference_rows(n: int, seed: int, *, conversational: bool = False, margin: bool = False) -> list[dict]:
    """{"prompt", "chosen", "rejected"}: "how was the movie?" -> praise (chosen) / a pan (rejected)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        prompt = f"how was the {topic}?"
        chosen = f"the {topic} was {rng.choice(POSITIVE)} and {rng.choice(POSITIVE)}"
        rejected = f"the {topic} was {rng.choice(NEGATIVE)} and {rng.choice(NEGATIVE)}"
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if conversational:
            row = {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        if margin:
            row["margin"] = rng.choice([0.0, 0.5, 1.0])
        rows.append(row)
    return rows


def ranked_rows(n: int, seed: int, k: int = 3) -> list[dict]:
    """{"prompt", "ranked"}: k answers, more praise first."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        answers = []
        for good in range(k, 0, -1):  # `good` praising words of k - 1 (best first)
            words = [rng.choice(POSITIVE) for _ in range(good - 1)] + [
                rng.choice(NEGATIVE) for _ in range(k - good)
            ]
            answers.append(f"the {topic} was " + " and ".join(words))
        rows.append({"prompt": f"how was the {topic}?", "ranked": answers})
    return rows


def hh_rows(n: int, seed: int) -> list[dict]:
    """HH-RLHF transcripts with a shared first exchange and the learnable last answer."""
    out = []
    for row in preference_rows(n, seed):
        head = f"\n\nHuman: hello\n\nAssistant: hi\n\nHuman: {row['prompt']}\n\nAssistant: "
        out.append({"chosen": head + row["chosen"], "rejected": head + row["rejected"]})
    return out


def data_files(tmp: Path, rows, n_train: int = 48, n_dev: int = 16, **options) -> list[str]:
    train = write_jsonl(tmp / "train.jsonl", rows(n_train, 0, **options))
    dev = write_jsonl(tmp / "dev.jsonl", rows(n_dev, 1, **options))
    return [f"data.train={train}", f"data.dev={dev}"]


def tiny_run(tmp: Path, steps: int) -> list[str]:
    return [
        f"out_dir={tmp / 'runs' / '{name}'}",
        f"train.steps={steps}",
        "train.batch_size=8",
        "schedule.warmup_steps=0",
        "eval.every=0",
        "checkpoint.every=0",
        "log.every=1",
        "data.max_length=64",
        *COMMON,
    ]


def plm(capsys, command: str, tmp: Path, base: Path, *overrides: str, steps: int = 4, flags: tuple = ()):
    recipe = tmp / f"{command}.yaml"  # every setting comes from the overrides
    recipe.write_text(f"name: {command}\n")
    return run_cli([command, recipe, f"init_from={base}", *tiny_run(tmp, steps), *overrides, *flags], capsys)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])
