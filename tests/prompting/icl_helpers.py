"""Tiny in-context learning data shared by the prompting tests: eight labelled reviews, a byte-level BPE
tokenizer that has never seen the label words (so they split into several tokens), tiny LMs."""

from __future__ import annotations

import functools

import torch

from plmkit.data.tasks import Row
from plmkit.tokenizer import Tokenizer

TRAIN = [
    ("a fine film", "1"),
    ("dull plot", "0"),
    ("great acting", "1"),
    ("boring and slow", "0"),
    ("lovely music", "1"),
    ("awful script", "0"),
    ("a joy", "1"),
    ("a mess", "0"),
]
DEV = [("so good", "1"), ("so bad", "0"), ("a fine mess", "0"), ("lovely", "1")]
WORDS = {"0": "terrible", "1": "great"}
# Hand-made sentence embeddings (2-D): cosine to [1, 0] ranks rows 0 > 2 > 6 > 5 > 3 = 7; row 5 has the
# largest dot product with [1, 0] but not the largest cosine.
TRAIN_VECTORS = torch.tensor(
    [[1.0, 0.0], [0.0, 1.0], [10.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [50.0, 40.0], [1.0, 0.2], [1.0, 1.0]]
)
CORPUS = [
    "Review: a film with a plot\nSentiment: good\n\n",
    "Review: music and acting\nSentiment: bad\n\n",
] * 10


def rows(pairs=TRAIN, file="train.tsv") -> list[Row]:
    return [Row({"text": t, "label": y}, f"{file}:{i + 2}") for i, (t, y) in enumerate(pairs)]


@functools.cache
def tokenizer(family: str = "gpt2") -> Tokenizer:
    """GPT-2 style (eos, pad; no bos, no mask) or RoBERTa style (bos <s>, mask <mask>)."""
    return Tokenizer.train(CORPUS, "bpe", vocab_size=290, family=family)


def lm(
    family: str = "causal", tok: Tokenizer | None = None, seed: int = 0, positions: int = 256
) -> torch.nn.Module:
    from tiny import tiny_model

    tok = tok or tokenizer()
    return tiny_model(family, seed=seed, vocab_size=tok.vocab_size, max_positions=positions, n_layer=1)
