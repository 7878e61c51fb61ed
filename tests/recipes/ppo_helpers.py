"""Tiny inputs of plm ppo: an untrained causal LM with a tokenizer fit to the addition task (the SFT model),
a RewardModel on its body (the reward model), prompt rows and a pre-training text file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from plmkit.prompting import arithmetic


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def equations(n: int, seed: int) -> list[str]:
    return [f"{r['prompt']}{r['completion']}" for r in arithmetic.sft_rows(n, seed=seed)]


def save_policy(folder: Path, seed: int = 0) -> Path:
    """A tiny GPT (d_model 32, 2 layers) and a byte-level BPE tokenizer of the addition text."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer

    if (folder / "plmkit.json").is_file():
        return folder
    tokenizer = Tokenizer.train(equations(2000, seed=99), kind="bpe", vocab_size=300, family="gpt2")
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=2, d_ff=64,
        max_positions=64, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


def save_reward_model(folder: Path, policy: Path, seed: int = 1, stats: dict | None = None) -> Path:
    """A RewardModel whose body is the policy's and whose value head is random (plm reward's output)."""
    from plmkit.io import load, save
    from plmkit.model.heads import RewardModel

    if (folder / "plmkit.json").is_file():
        return folder
    base, tokenizer = load(policy)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RewardModel(base.config)
    model.transformer.load_state_dict(base.transformer.state_dict())
    save(model, tokenizer, folder)
    if stats is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"reward_stats": stats}))
    return folder


def write_prompts(path: Path, n: int, seed: int) -> Path:
    return write_jsonl(
        path, [{"prompt": r["prompt"], "answer": r["completion"]} for r in arithmetic.sft_rows(n, seed)]
    )


def write_pretraining_text(path: Path, n: int = 400, seed: int = 5) -> Path:
    path.write_text("\n".join(equations(n, seed)) + "\n", encoding="utf-8")
    return path
