"""Tiny causal LMs saved as checkpoints for the server tests: one with ChatML control tokens and the ChatML
template in its tokenizer, one without any chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import english_text

WORDS = "red green blue cat dog bird sun moon tree river stone cloud".split()


def save_tiny_lm(folder: Path, chat_template: bool = True, max_positions: int = 256) -> Path:
    """A GPT-2-layout causal LM (d_model 32, 2 layers, seed 0) with a byte-level BPE tokenizer (eos
    <|endoftext|>, pad <|pad|>; with `chat_template`: <|im_start|> / <|im_end|> and the ChatML template)."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.prompting.chat import BUILTIN
    from plmkit.tokenizer import Tokenizer
    from plmkit.tokenizer.special import SpecialTokens

    if (folder / "plmkit.json").is_file():
        return folder
    markers = ["<|im_start|>", "<|im_end|>"] if chat_template else []
    special = SpecialTokens(eos="<|endoftext|>", pad="<|pad|>", additional=markers)
    tokenizer = Tokenizer.train(
        [english_text(8_000), " ".join(WORDS * 20)], kind="bpe", vocab_size=320, special_tokens=special
    )
    if chat_template:
        tokenizer.chat_template = BUILTIN["chatml"].source
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=2, d_ff=64,
        max_positions=max_positions, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def chat_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("serve") / "chat-lm", max_positions=1024)


@pytest.fixture(scope="session")
def plain_lm(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("serve") / "plain-lm", chat_template=False)
