"""A tiny untrained chat checkpoint for the chat and web-page tests: a GPT-2-layout causal LM with a byte-level
BPE tokenizer that has ChatML's control tokens, saved with a chat template (or none)."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "You are a helpful assistant. What is the capital of France? Paris is the capital of France.",
    "Tell me a joke about cats and dogs, please. Why did the cat sit on the computer? To watch the mouse.",
    "hello there, how are you today? I am fine, thank you. The weather is nice and the sun is out.",
] * 20


def save_chat_model(
    folder: Path, template: str | None = "chatml", max_positions: int = 256, seed: int = 0, **model
) -> Path:
    """Save the checkpoint in `folder` (once) and return it; `template`: a built-in name, or None for none."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.prompting.chat import ChatTemplate
    from plmkit.tokenizer import SpecialTokens, Tokenizer

    if (folder / "plmkit.json").is_file():
        return folder
    special = SpecialTokens(eos="<|endoftext|>", pad="<|pad|>", additional=["<|im_start|>", "<|im_end|>"])
    tokenizer = Tokenizer.train(CORPUS, "bpe", vocab_size=300, special_tokens=special)
    if template is not None:
        tokenizer.chat_template = ChatTemplate.builtin(template).source
    sizes = dict(d_model=32, n_layer=2, n_head=2, d_ff=64, dropout=0.0, **model)
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, max_positions=max_positions,
        pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id, **sizes,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    save(model.eval(), tokenizer, folder)
    return folder
