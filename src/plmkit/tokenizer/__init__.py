"""Tokenizers on the Rust `tokenizers` library.

base      Tokenizer: encode / decode / pad, save / load, train (kind bpe | wordpiece | unigram)
special   SpecialTokens (roles: bos, eos, pad, ...) and each family's defaults
train     the trainers of the three kinds (used by Tokenizer.train)
hf        Hugging Face tokenizer folders (tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model)
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports
from plmkit.tokenizer.special import (
    FAMILIES,
    ROLES,
    SENTINEL,
    SENTINEL_PATTERN,
    SpecialTokens,
    family_special_tokens,
    special_token_order,
)

# loaded on first use (PEP 562): the special-token tables above need no torch, the Tokenizer does
_LAZY = {
    "CONFIG_FILE": "plmkit.tokenizer.base",
    "TOKENIZER_FILE": "plmkit.tokenizer.base",
    "Tokenizer": "plmkit.tokenizer.base",
}


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

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
