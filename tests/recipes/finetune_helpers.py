"""Tiny bases and task data for the fine-tuning tests: a WordPiece tokenizer + a tiny BERT-layout
masked LM and a tiny T5-layout seq2seq model saved as plmkit checkpoints, and small learnable task files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tiny import ARCHS, T5_STYLE
from train_helpers import COMMON, english_text

POSITIVE = "good great nice fine happy lovely superb".split()
NEGATIVE = "bad awful poor sad ugly terrible boring".split()
FILLER = "the movie was a and it film story with very".split()
ZH = "今天天气真好我们一起出去玩吧明天下雨他们学校老师学生喜欢读书写字"


def tokenizer_texts() -> list[str]:
    words = " ".join(POSITIVE + NEGATIVE + FILLER)
    return [english_text(20_000), words, words, " ".join(ZH), " ".join(ZH)]


def save_base(folder: Path, kind: str = "masked", max_positions: int = 64) -> Path:
    """A tiny untrained base checkpoint (masked: BERT layout; causal: GPT-2; seq2seq: T5 layout) with its
    tokenizer (WordPiece, BERT special tokens)."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer

    if (folder / "plmkit.json").is_file():
        return folder
    tokenizer = Tokenizer.train(tokenizer_texts(), kind="wordpiece", vocab_size=400, family="bert")
    arch = {"masked": dict(ARCHS["bert"]), "causal": dict(ARCHS["gpt2"])}.get(kind) or {
        "family": "seq2seq",
        **T5_STYLE,
    }
    if kind == "seq2seq":
        arch["decoder_start_token_id"] = tokenizer.pad_id
    config = ModelConfig(
        **arch,
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_ff=64,
        max_positions=max_positions,
        dropout=0.0,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.special_id("sep") if kind == "seq2seq" else tokenizer.eos_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def classification_files(tmp: Path, n_train: int = 64, n_dev: int = 24) -> tuple[Path, Path]:
    train = write_tsv(tmp / "train.tsv", ["sentence", "label"], sentiment_rows(n_train, 0))
    dev = write_tsv(tmp / "dev.tsv", ["sentence", "label"], sentiment_rows(n_dev, 1))
    return train, dev


def ner_rows(n: int, seed: int) -> list[dict]:
    """Sentences whose positive words are PER entities and negative words LOC entities (one word each)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 7)):
            kind = rng.random()
            if kind < 0.2:
                tokens.append(rng.choice(POSITIVE))
                tags.append("B-PER")
            elif kind < 0.4:
                tokens.append(rng.choice(NEGATIVE))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def squad_file(path: Path, n: int, seed: int) -> Path:
    """SQuAD-format json: the answer is always the positive word in the context."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        words = [rng.choice(FILLER + NEGATIVE) for _ in range(rng.randint(4, 9))]
        answer = rng.choice(POSITIVE)
        words.insert(rng.randint(0, len(words)), answer)
        context = " ".join(words)
        start = context.index(answer)
        qa = {
            "id": f"q{i}",
            "question": "which word is good ?",
            "answers": [{"text": answer, "answer_start": start}],
        }
        paragraphs.append({"context": context, "qas": [qa]})
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8"
    )
    return path


def csc_rows(n: int, seed: int) -> list[dict]:
    """Chinese sentences with one character swapped for its neighbour in ZH (the error) in half of them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = rng.randint(0, len(ZH) - 8)
        target = ZH[start : start + rng.randint(5, 8)]
        source = list(target)
        if rng.random() < 0.5:
            i = rng.randrange(len(source))
            source[i] = ZH[(ZH.index(source[i]) + 1) % len(ZH)]
        rows.append({"source": "".join(source), "target": target})
    return rows


def tiny_finetune(tmp: Path, steps: int = 8) -> list[str]:
    """Overrides for a tiny, fast fine-tuning run inside tmp."""
    return [
        f"out_dir={tmp / 'runs' / '{name}'}",
        f"train.steps={steps}",
        "epochs=null",
        "train.batch_size=8",
        "schedule.warmup_steps=0",
        "schedule.kind=cosine",
        "schedule.min_lr_ratio=0.1",
        "optim.lr=2e-3",
        "optim.weight_decay=0.1",
        "optim.betas=[0.9, 0.95]",
        "eval.every=4",
        "checkpoint.every=0",
        "log.every=1",
        "task.max_length=32",
        "task.batch_size=16",
        *COMMON,
    ]


def save_chinese_base(folder: Path, corpus: Path, n_lines: int = 1500) -> Path:
    """A tiny untrained BERT-layout masked LM with a WordPiece tokenizer (family bert) trained on the first
    n_lines of `corpus`: the layout of recipes/bert-wwm-zh.yaml's model, at test size."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer

    lines = corpus.read_text(encoding="utf-8").splitlines()[:n_lines]
    tokenizer = Tokenizer.train(lines, kind="wordpiece", vocab_size=2000, family="bert")
    config = ModelConfig(
        **ARCHS["bert"],
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_ff=64,
        max_positions=128,
        dropout=0.0,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder
