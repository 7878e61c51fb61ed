"""Attention masks: what each family's mask lets a position see, checked on whole models by perturbing
tokens, plus SDPA attention against the explicit definition softmax(QKᵀ/√d + M)V for every mask kind."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from plmkit.errors import ShapeError
from plmkit.model import ModelConfig, build_model, masks
from plmkit.model.attention import Attention, reference_attention
from plmkit.model.layers import RelativePositionBias, Rotary, apply_rotary
from tiny import tiny_model

VOCAB = 64
T = 10
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=32)
SAME = 1e-6  # "unchanged": masked keys get exactly zero weight, so outputs agree to rounding
CHANGED = 1e-4  # "changed": a visible token moves the output by far more than this


tiny = partial(tiny_model, **TINY)  # tiny(family, seed=0, **overrides)


def random_ids(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, shape, generator=g)


def perturb(ids: torch.Tensor, positions, seed: int = 7) -> torch.Tensor:
    """Replace ids[:, positions] by different tokens (every replaced token really changes)."""
    out = ids.clone()
    g = torch.Generator().manual_seed(seed)
    for p in [positions] if isinstance(positions, int) else positions:
        shift = torch.randint(1, VOCAB - 2, (ids.shape[0],), generator=g)
        out[:, p] = (ids[:, p] - 2 + shift) % (VOCAB - 2) + 2  # stays in [2, VOCAB), never equal
    assert (out[:, positions] != ids[:, positions]).all()
    return out


def per_position_change(a, b) -> torch.Tensor:
    """(B, T, C) pair -> (B, T) max absolute difference per position."""
    return (a - b).abs().amax(dim=-1)


def largest(diff: torch.Tensor) -> float:
    """Max of a possibly empty selection (an empty one changed nothing)."""
    return float(diff.max()) if diff.numel() else 0.0


@torch.no_grad()
def outputs(model, ids, **kw):
    out = model(ids, **kw)
    return out.logits, out.hidden_states


# ---- causal ------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "rotary", "relative"])
@pytest.mark.parametrize("explicit_mask", [False, True], ids=["sdpa-causal", "explicit-mask"])
def test_causal_future_tokens_do_not_leak(position, explicit_mask):
    model = tiny("causal", position=position)
    ids = random_ids((2, T))
    # an all-ones padding mask forces the explicit boolean mask path instead of SDPA's is_causal
    kw = dict(attention_mask=torch.ones_like(ids)) if explicit_mask else {}
    for t in (0, 3, T - 2):
        changed = perturb(ids, list(range(t + 1, T)))
        for a, b in zip(outputs(model, ids, **kw), outputs(model, changed, **kw)):
            diff = per_position_change(a, b)
            assert diff[:, : t + 1].max() < SAME, f"position <= {t} saw a later token"
            assert (diff[:, t + 1 :] > CHANGED).all()


# ---- bidirectional -----------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "relative"])
def test_masked_lm_every_token_sees_every_token(position):
    model = tiny("masked", position=position)
    ids = random_ids((2, T))
    for j in (0, T // 2, T - 1):
        for a, b in zip(outputs(model, ids), outputs(model, perturb(ids, j))):
            assert (per_position_change(a, b) > CHANGED).all(), (
                f"changing token {j} left a position unchanged"
            )


# ---- prefix ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix_length", [1, 4, 7])
def test_prefix_lm_visibility(prefix_length):
    model = tiny("prefix")
    ids = random_ids((2, T))
    kw = dict(prefix_lengths=torch.tensor([prefix_length, prefix_length]))
    base = outputs(model, ids, **kw)
    # any target token: source positions never see it
    for a, b in zip(base, outputs(model, perturb(ids, list(range(prefix_length, T))), **kw)):
        assert per_position_change(a, b)[:, :prefix_length].max() < SAME
    # a source token: seen by every position (source bidirectionally, targets through the prefix)
    for j in range(prefix_length):
        for a, b in zip(base, outputs(model, perturb(ids, j), **kw)):
            assert (per_position_change(a, b) > CHANGED).all(), f"source token {j} invisible somewhere"
    # a target token j: seen by targets >= j only
    for j in range(prefix_length, T):
        for a, b in zip(base, outputs(model, perturb(ids, j), **kw)):
            diff = per_position_change(a, b)
            assert diff[:, :j].max() < SAME, f"target token {j} seen by an earlier position"
            assert (diff[:, j:] > CHANGED).all()


def test_prefix_lengths_differ_per_example():
    model = tiny("prefix")
    ids = random_ids((2, T))
    kw = dict(prefix_lengths=torch.tensor([2, 6]))
    base = outputs(model, ids, **kw)[0]
    diff = per_position_change(base, outputs(model, perturb(ids, 4), **kw)[0])
    # example 0: token 4 is a target -> positions 0..3 do not see it; example 1: it is source -> all do
    assert diff[0, :4].max() < SAME and (diff[0, 4:] > CHANGED).all()
    assert (diff[1] > CHANGED).all()


def test_prefix_lm_extremes_equal_causal_and_masked_models():
    """prefix_length 0 is a left-to-right LM, prefix_length >= T a bidirectional one: the same weights in
    CausalLM / MaskedLM give the same logits."""
    prefix_model = tiny("prefix")
    causal_model = build_model(prefix_model.config.replace(family="causal")).eval()
    masked_model = build_model(prefix_model.config.replace(family="masked")).eval()
    causal_model.load_state_dict(prefix_model.state_dict())
    masked_model.load_state_dict(prefix_model.state_dict())
    ids = random_ids((2, T))
    with torch.no_grad():
        zero = prefix_model(ids, prefix_lengths=torch.zeros(2, dtype=torch.long)).logits
        full = prefix_model(ids, prefix_lengths=torch.full((2,), T + 3)).logits
        torch.testing.assert_close(zero, causal_model(ids).logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(full, masked_model(ids).logits, atol=1e-5, rtol=0)
        # no prefix_lengths at all: the PrefixLM falls back to left-to-right
        torch.testing.assert_close(prefix_model(ids).logits, zero, atol=1e-5, rtol=0)


# ---- padding -----------------------------------------------------------------------------------
def test_padding_values_do_not_matter_masked_lm():
    model = tiny("masked")
    ids = random_ids((2, T))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding
    mask[1, 8:] = 0
    changed = ids.clone()
    changed[0, 6:] = perturb(ids, list(range(6, T)))[0, 6:]
    changed[1, 8:] = perturb(ids, list(range(8, T)))[1, 8:]
    for a, b in zip(outputs(model, ids, attention_mask=mask), outputs(model, changed, attention_mask=mask)):
        diff = per_position_change(a, b)
        assert diff[mask.bool()].max() < SAME
    # and the padded example's real positions equal the unpadded short example
    short = outputs(model, ids[:1, :6])[0]
    torch.testing.assert_close(outputs(model, ids, attention_mask=mask)[0][:1, :6], short, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_left_padding_values_do_not_matter_causal_lm(position):
    model = tiny("causal", position=position)
    ids = random_ids((2, T))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    changed = ids.clone()
    changed[0, :3] = perturb(ids, [0, 1, 2])[0, :3]
    kw = dict(attention_mask=mask, position_ids=positions)
    for a, b in zip(outputs(model, ids, **kw), outputs(model, changed, **kw)):
        assert per_position_change(a, b)[mask.bool()].max() < SAME
    # the real tokens of the padded row give the logits of the same tokens without padding
    alone = outputs(model, ids[:1, 3:])[0]
    torch.testing.assert_close(outputs(model, ids, **kw)[0][:1, 3:], alone, atol=1e-5, rtol=0)


def test_padding_in_prefix_lm_source():
    model = tiny("prefix")
    ids = random_ids((1, T))
    mask = torch.ones_like(ids)
    mask[0, 3:5] = 0  # padded source slots between source and target (prefix length 5)
    kw = dict(attention_mask=mask, prefix_lengths=torch.tensor([5]))
    changed = perturb(ids, [3, 4])
    for a, b in zip(outputs(model, ids, **kw), outputs(model, changed, **kw)):
        assert per_position_change(a, b)[mask.bool()].max() < SAME


@pytest.mark.parametrize("position", ["learned", "relative"])
def test_seq2seq_encoder_padding_reaches_neither_encoder_nor_decoder(position):
    model = tiny("seq2seq", position=position)
    src = random_ids((2, T))
    tgt = random_ids((2, 6), seed=3)
    mask = torch.ones_like(src)
    mask[1, 7:] = 0
    changed = src.clone()
    changed[1, 7:] = perturb(src, [7, 8, 9])[1, 7:]
    with torch.no_grad():
        out_a = model(src, attention_mask=mask, decoder_input_ids=tgt)
        out_b = model(changed, attention_mask=mask, decoder_input_ids=tgt)
    enc = per_position_change(out_a.encoder_hidden_states, out_b.encoder_hidden_states)
    assert enc[mask.bool()].max() < SAME
    assert (out_a.logits - out_b.logits).abs().max() < SAME
    # an unmasked change in the source does reach the decoder
    with torch.no_grad():
        out_c = model(perturb(src, 2), attention_mask=mask, decoder_input_ids=tgt)
    assert (per_position_change(out_a.logits, out_c.logits) > CHANGED).all()


# ---- user masks --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["prefix", "causal", "masked"])
def test_user_3d_right_to_left_mask_is_honoured(family):
    """A 3D mask replaces the family's own mask: right-to-left means position i sees tokens >= i."""
    model = tiny(family)
    ids = random_ids((2, T))
    rtl = masks.right_to_left(T, T)[:, 0].expand(2, T, T).long()  # (B, T, T)
    base = outputs(model, ids, attention_mask=rtl)
    for j in (0, 4, T - 1):
        for a, b in zip(base, outputs(model, perturb(ids, j), attention_mask=rtl)):
            diff = per_position_change(a, b)
            assert largest(diff[:, j + 1 :]) < SAME, f"token {j} seen by a later position"
            assert (diff[:, : j + 1] > CHANGED).all()


def test_right_to_left_mask_is_causal_on_the_reversed_sequence():
    """Without absolute positions, right-to-left attention is exactly causal attention read backwards."""
    model = tiny("prefix", position="none")
    ids = random_ids((2, T))
    rtl3 = masks.right_to_left(T, T)[:, 0].expand(2, T, T)
    with torch.no_grad():
        rtl = model(ids, attention_mask=rtl3).hidden_states
        ltr = model(ids.flip(1), prefix_lengths=torch.zeros(2, dtype=torch.long)).hidden_states.flip(1)
        torch.testing.assert_close(rtl, ltr, atol=1e-5, rtol=0)
        # the same mask as 4D boolean and as 4D additive float gives the same result
        as_4d = model(ids, attention_mask=rtl3[:, None]).hidden_states
        additive = masks.to_additive(rtl3[:, None], torch.float32)
        as_float = model(ids, attention_mask=additive).hidden_states
    torch.testing.assert_close(as_4d, rtl, atol=0, rtol=0)
    torch.testing.assert_close(as_float, rtl, atol=0, rtol=0)


# ---- SDPA attention == explicit softmax(QKᵀ/√d + M)V -------------------------------------------
def explicit_attention(q, k, v, mask, scale):
    """An independent, loop-per-head restatement of softmax(QKᵀ·scale + M)V (query head h reads
    key/value head h // (H / H_kv), the grouped-query convention)."""
    b, h, t, d = q.shape
    group = h // k.shape[1]
    out = torch.empty_like(q)
    for head in range(h):
        kh, vh = k[:, head // group], v[:, head // group]
        scores = torch.einsum("btd,bsd->bts", q[:, head], kh) * scale
        if mask is not None:
            m = mask.expand(b, h, t, k.shape[2])
            scores = scores + m[:, head]
        out[:, head] = torch.softmax(scores, dim=-1) @ vh
    return out


def attention_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=VOCAB, d_model=32, n_head=4, d_ff=64, max_positions=64), **kw})


def project(attn: Attention, x, rotary=None, cache=None):
    """q, k, v exactly as Attention.forward computes them, via its own fused projection."""
    qw, kvw = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
    q, k, v = attn.qkv(x).split([qw, kvw, kvw], dim=-1)
    q, k, v = attn._heads(q, attn.n_head), attn._heads(k, attn.n_kv_head), attn._heads(v, attn.n_kv_head)
    if rotary is not None:
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    if cache is not None:
        k, v = torch.cat((cache[0], k), 2), torch.cat((cache[1], v), 2)
    return q, k, v


def finish(attn: Attention, y):
    b, _, t, _ = y.shape
    return attn.out(y.transpose(1, 2).reshape(b, t, -1))


B, TQ = 2, 6


def _mask_case(kind: str):
    """-> (config overrides, additive mask or None, past length, is_causal flag)."""
    add = lambda allowed: masks.to_additive(allowed, torch.float32)  # noqa: E731
    lengths = torch.tensor([TQ, 3])
    pad = torch.arange(TQ)[None] < lengths[:, None]  # right padding
    left_pad = torch.arange(TQ)[None] >= torch.tensor([0, 2])[:, None]
    g = torch.Generator().manual_seed(5)
    user = torch.rand(B, TQ, TQ, generator=g) > 0.5
    user |= torch.eye(TQ, dtype=torch.bool)  # every query sees at least itself
    cases = {
        "bidirectional": ({}, None, 0, False),
        "causal": ({}, add(masks.causal(TQ, TQ)), 0, False),
        "causal-sdpa-fast-path": ({}, None, 0, True),
        "causal-past": ({}, add(masks.causal(TQ, TQ + 5, past=5)), 5, False),
        "prefix": ({}, add(masks.prefix(torch.tensor([2, 4]), TQ, TQ)), 0, False),
        "prefix-past": ({}, add(masks.prefix(torch.tensor([2, 7]), TQ, TQ + 4, past=4)), 4, False),
        "padding": ({}, add(masks.padding(pad.long())), 0, False),
        "causal+left-padding": ({}, add(masks.causal(TQ, TQ) & masks.padding(left_pad.long())), 0, False),
        "user-3d": ({}, add(masks.from_user(user.long(), B, TQ, TQ)), 0, False),
        "gqa-causal": ({"n_kv_head": 2}, add(masks.causal(TQ, TQ)), 0, False),
        "gqa-past": ({"n_kv_head": 2}, add(masks.causal(TQ, TQ + 3, past=3)), 3, False),
        "mqa-prefix": ({"n_kv_head": 1}, add(masks.prefix(torch.tensor([1, 3]), TQ, TQ)), 0, False),
        "mqa-sdpa-fast-path": ({"n_kv_head": 1}, None, 0, True),
    }
    return cases[kind]


MASK_KINDS = [
    "bidirectional",
    "causal",
    "causal-sdpa-fast-path",
    "causal-past",
    "prefix",
    "prefix-past",
    "padding",
    "causal+left-padding",
    "user-3d",
    "gqa-causal",
    "gqa-past",
    "mqa-prefix",
    "mqa-sdpa-fast-path",
]


@pytest.mark.parametrize("rotary", [False, True], ids=["no-rope", "rope"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_sdpa_attention_equals_reference(kind, rotary):
    overrides, mask, past, is_causal = _mask_case(kind)
    config = attention_config(**overrides)
    torch.manual_seed(0)
    attn = Attention(config).eval()
    x = torch.randn(B, TQ, config.d_model)
    cache = None
    if past:
        cache = (
            torch.randn(B, config.kv_heads, past, config.dim_per_head),
            torch.randn(B, config.kv_heads, past, config.dim_per_head),
        )
    rot = None
    if rotary:
        positions = torch.arange(past, past + TQ)[None].expand(B, TQ)
        rot = Rotary(config.dim_per_head).cos_sin(positions, torch.float32)
    with torch.no_grad():
        y, new_cache = attn(x, mask, rotary=rot, cache=cache, is_causal=is_causal)
        q, k, v = project(attn, x, rot, cache)
        ref_mask = mask if not is_causal else masks.to_additive(masks.causal(TQ, TQ), torch.float32)
        ref = reference_attention(q, k, v, ref_mask)
        ours = explicit_attention(q, k, v, ref_mask, config.dim_per_head**-0.5)
    torch.testing.assert_close(ref, ours, atol=1e-6, rtol=0)  # the reference is what it says
    torch.testing.assert_close(y, finish(attn, ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(new_cache[0], k, atol=0, rtol=0)  # the cache holds (rotated) keys
    assert new_cache[0].shape == (B, config.kv_heads, past + TQ, config.dim_per_head)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_sdpa_attention_with_t5_relative_bias(bidirectional):
    """T5: unscaled scores (attention_scale=1) plus a learned per-head bias added to the mask."""
    config = attention_config(attention_scale=1.0, attention_bias=False, head_dim=16, position="relative")
    torch.manual_seed(0)
    attn = Attention(config).eval()
    bias_module = RelativePositionBias(config, bidirectional)
    torch.nn.init.normal_(bias_module.bias.weight, std=1.0)
    x = torch.randn(B, TQ, config.d_model) * 0.3
    pad = torch.ones(B, TQ, dtype=torch.long)
    pad[1, 4:] = 0
    allowed = masks.padding(pad) if bidirectional else masks.causal(TQ, TQ) & masks.padding(pad)
    mask = bias_module(TQ, TQ) + masks.to_additive(allowed, torch.float32)  # (B, H, T, T)
    assert mask.shape == (B, config.n_head, TQ, TQ)
    with torch.no_grad():
        y, _ = attn(x, mask)
        q, k, v = project(attn, x)
        ref = reference_attention(q, k, v, mask, scale=1.0)
        ours = explicit_attention(q, k, v, mask, 1.0)
    torch.testing.assert_close(ref, ours, atol=1e-6, rtol=0)
    torch.testing.assert_close(y, finish(attn, ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_sdpa_cross_attention_equals_reference(n_kv_head):
    config = attention_config(n_kv_head=n_kv_head)
    torch.manual_seed(0)
    attn = Attention(config, cross=True).eval()
    x, memory = torch.randn(B, TQ, config.d_model), torch.randn(B, 9, config.d_model)
    src = torch.ones(B, 9, dtype=torch.long)
    src[0, 5:] = 0
    mask = masks.to_additive(masks.padding(src), torch.float32)
    with torch.no_grad():
        y, (k_cached, v_cached) = attn(x, mask, memory=memory)
        q = attn._heads(attn.q(x), attn.n_head)
        k, v = attn.kv(memory).split(attn.n_kv_head * attn.head_dim, dim=-1)
        k, v = attn._heads(k, attn.n_kv_head), attn._heads(v, attn.n_kv_head)
        ref = reference_attention(q, k, v, mask)
        # with the cached encoder keys/values the memory is not needed again
        y_cached, _ = attn(x, mask, cache=(k_cached, v_cached))
    torch.testing.assert_close(
        ref, explicit_attention(q, k, v, mask, config.dim_per_head**-0.5), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(y, finish(attn, ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(y_cached, y, atol=0, rtol=0)


# ---- masks module units ------------------------------------------------------------------------
def test_mask_shapes():
    assert masks.causal(4, 7, past=3).shape == (1, 1, 4, 7)
    assert masks.right_to_left(4, 4).shape == (1, 1, 4, 4)
    assert masks.bidirectional(3, 5).shape == (1, 1, 3, 5)
    assert masks.prefix(torch.tensor([1, 2, 3]), 4, 6, past=2).shape == (3, 1, 4, 6)
    assert masks.padding(torch.ones(2, 5, dtype=torch.long)).shape == (2, 1, 1, 5)
    for m in (masks.causal(2, 2), masks.bidirectional(2, 2), masks.prefix(torch.tensor([1]), 2, 2)):
        assert m.dtype == torch.bool


def test_causal_and_prefix_values():
    expected_causal = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks.causal(4, 4)[0, 0], expected_causal)
    assert torch.equal(masks.right_to_left(4, 4)[0, 0], expected_causal.T)
    # prefix of 2 in a length-4 sequence: the two source tokens see each other, targets are causal
    expected_prefix = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(masks.prefix(torch.tensor([2]), 4, 4)[0, 0], expected_prefix)
    # with a cache, the queries are the last rows of the full mask
    assert torch.equal(masks.causal(2, 6, past=4)[0, 0], masks.causal(6, 6)[0, 0, 4:])
    full = masks.prefix(torch.tensor([3, 5]), 6, 6)
    assert torch.equal(masks.prefix(torch.tensor([3, 5]), 2, 6, past=4), full[:, :, 4:])


@pytest.mark.parametrize("t", [1, 5])
def test_prefix_zero_is_causal_and_full_is_bidirectional(t):
    zeros = masks.prefix(torch.zeros(2, dtype=torch.long), t, t)
    assert torch.equal(zeros, masks.causal(t, t).expand(2, 1, t, t))
    for length in (t, t + 10):
        full = masks.prefix(torch.full((2,), length), t, t)
        assert torch.equal(full, masks.bidirectional(t, t).expand(2, 1, t, t))


def test_from_user_shapes():
    two_d = masks.from_user(torch.tensor([[1, 1, 0]]), 1, 3, 3)
    assert two_d.shape == (1, 1, 1, 3) and two_d.tolist() == [[[[True, True, False]]]]
    three_d = masks.from_user(torch.ones(2, 3, 4), 2, 3, 4)
    assert three_d.shape == (2, 1, 3, 4) and three_d.dtype == torch.bool
    four_bool = masks.from_user(torch.ones(2, 4, 3, 4, dtype=torch.bool), 2, 3, 4)
    assert four_bool.shape == (2, 4, 3, 4)
    four_float = masks.from_user(torch.tensor([0.0, -1e9, 0.0]).view(1, 1, 1, 3).expand(1, 1, 2, 3), 1, 2, 3)
    assert four_float.tolist() == [[[[True, False, True], [True, False, True]]]]


@pytest.mark.parametrize(
    "shape, named",
    [
        ((2, 5), "(2, 5)"),  # 2D of the wrong length
        ((3, 6), "(3, 6)"),  # 2D of the wrong batch
        ((2, 6, 5), "(2, 6, 5)"),  # 3D with the wrong key length
        ((2, 1, 4, 6), "(2, 1, 4, 6)"),  # 4D with the wrong query length
        ((6,), "(6,)"),  # 1D
        ((1, 1, 1, 1, 6), "(1, 1, 1, 1, 6)"),  # 5D
    ],
)
def test_from_user_shape_errors_name_the_shape(shape, named):
    with pytest.raises(ShapeError) as info:
        masks.from_user(torch.ones(shape), 2, 3, 6)
    assert named in str(info.value)


def test_to_additive():
    allowed = masks.causal(3, 3)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m = masks.to_additive(allowed, dtype)
        assert m.dtype == dtype
        assert (m[allowed] == 0).all()
        assert (m[~allowed] == torch.finfo(dtype).min).all()
    # a row with nothing allowed (a left-padded query) still gives a finite softmax
    nothing = masks.to_additive(torch.zeros(1, 1, 1, 4, dtype=torch.bool), torch.float32)
    probs = torch.softmax(torch.randn(1, 1, 1, 4) + nothing, dim=-1)
    assert torch.isfinite(probs).all()
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)
