"""Shared tiny models and repository paths for the tests (helpers live in tests/, on pytest's pythonpath).

Every test that needs "a small model of family X" builds it here, so a size change happens in one place.
"""

from __future__ import annotations

from pathlib import Path

import torch

from plmkit.model import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RECIPES = ROOT / "recipes"
SHARED_DATA = ROOT.parent / "shared" / "data"  # present in CI, absent in a user's clone

VOCAB = 61
FAMILIES = ["causal", "masked", "prefix", "seq2seq"]
SIZES = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=32)


def tiny_model(family: str = "causal", seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded tiny model in eval mode; `overrides` replace any field of SIZES or add config fields."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(family=family, **{**SIZES, **overrides})).eval()


def random_ids(shape: tuple[int, ...], seed: int = 1, low: int = 3, vocab: int = VOCAB) -> torch.Tensor:
    """Token ids drawn above the special ids, from their own generator (the global seed is untouched)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, shape, generator=g)
