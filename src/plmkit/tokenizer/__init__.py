"""Tokenizers on the Rust `tokenizers` library.

    base      Tokenizer: encode / decode / pad, save / load, train (kind bpe | wordpiece | unigram)
    special   SpecialTokens (roles: bos, eos, pad, ...) and each family's defaults
    train     the trainers of the three kinds (used by Tokenizer.train)
    hf        Hugging Face tokenizer folders (tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model)
"""

from plmkit.tokenizer.base import CONFIG_FILE, TOKENIZER_FILE, Tokenizer
from plmkit.tokenizer.special import (
    FAMILIES,
    ROLES,
    SENTINEL,
    SENTINEL_PATTERN,
    SpecialTokens,
    family_special_tokens,
    special_token_order,
)

__all__ = [
    "CONFIG_FILE",
    "FAMILIES",
    "ROLES",
    "SENTINEL",
    "SENTINEL_PATTERN",
    "TOKENIZER_FILE",
    "SpecialTokens",
    "Tokenizer",
    "family_special_tokens",
    "special_token_order",
]
