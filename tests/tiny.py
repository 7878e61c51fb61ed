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

# One configuration per architecture the PEFT and HF tests cover (the reference layouts, tiny).
ARCHS = {
    "gpt2": dict(family="causal"),
    "llama": dict(
        family="causal",
        position="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        attention_bias=False,
        mlp_bias=False,
        n_kv_head=2,
        tie_embeddings=False,
    ),
    "bert": dict(
        family="masked",
        pre_norm=False,
        embedding_norm=True,
        final_norm=False,
        type_vocab_size=2,
        lm_head_bias=True,
        lm_head_transform=True,
    ),
    "unilm": dict(family="prefix"),
    "bart": dict(family="seq2seq", pre_norm=False, embedding_norm=True, final_norm=False, position_offset=2),
    "t5": dict(
        family="seq2seq",
        position="relative",
        norm="rmsnorm",
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        gated_mlp=True,
        attention_scale=1.0,
        tied_output_scale=True,
    ),
}


# Encoder–decoder variants for decoding tests. T5: relative position bias, RMSNorm, unscaled attention,
# tied head scaled by d_model**-0.5; BART: post-norm, learned positions offset by 2, embedding norm,
# decoder starts from eos.
T5_STYLE = dict(
    position="relative",
    norm="rmsnorm",
    norm_bias=False,
    attention_bias=False,
    mlp_bias=False,
    attention_scale=1.0,
    tied_output_scale=True,
    decoder_start_token_id=0,
)
BART_STYLE = dict(
    position_offset=2, pre_norm=False, embedding_norm=True, final_norm=False, decoder_start_token_id=2
)


def tiny_model(family: str = "causal", seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded tiny model in eval mode; `overrides` replace any field of SIZES or add config fields."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(family=family, **{**SIZES, **overrides})).eval()


def random_ids(shape: tuple[int, ...], seed: int = 1, low: int = 3, vocab: int = VOCAB) -> torch.Tensor:
    """Token ids drawn above the special ids, from their own generator (the global seed is untouched)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, shape, generator=g)
