"""Building blocks against their formulas, each restated independently here (math module, loops)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plmkit.model import ModelConfig
from plmkit.model.layers import (
    MLP,
    Embeddings,
    RelativePositionBias,
    RMSNorm,
    Rotary,
    activation_fn,
    apply_rotary,
    make_norm,
    relative_position_bucket,
    sinusoidal_table,
)

TINY = dict(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_ff=48, max_positions=64)


def config(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


# ---- sinusoidal positions ----------------------------------------------------------------------
@pytest.mark.parametrize("n_positions, dim", [(50, 16), (7, 6), (1, 2)])
def test_sinusoidal_table_matches_formula(n_positions, dim):
    table = sinusoidal_table(n_positions, dim)
    assert table.shape == (n_positions, dim)
    for pos in range(n_positions):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert abs(table[pos, 2 * i].item() - math.sin(angle)) < 1e-6
            assert abs(table[pos, 2 * i + 1].item() - math.cos(angle)) < 1e-6


def test_sinusoidal_embeddings_add_the_table():
    cfg = config(position="sinusoidal", position_offset=2)
    torch.manual_seed(0)
    emb = Embeddings(cfg).eval()
    ids = torch.tensor([[3, 4, 5]])
    positions = torch.tensor([[0, 1, 5]])
    expected = emb.tokens(ids) + sinusoidal_table(cfg.max_positions + 2, cfg.d_model)[positions + 2]
    torch.testing.assert_close(emb(ids, positions), expected, atol=1e-6, rtol=0)
    assert not any("sinusoid" in name for name, _ in emb.named_parameters())  # a fixed table, not learned


def test_learned_positions_offset_and_embedding_scale():
    cfg = config(position_offset=2, scale_embeddings=True)
    torch.manual_seed(0)
    emb = Embeddings(cfg).eval()
    assert emb.positions.num_embeddings == cfg.max_positions + 2  # BART: rows 0 and 1 are never used
    ids, positions = torch.tensor([[3, 4]]), torch.tensor([[0, 1]])
    expected = emb.tokens(ids) * math.sqrt(cfg.d_model) + emb.positions(positions + 2)
    torch.testing.assert_close(emb(ids, positions), expected, atol=1e-6, rtol=0)


# ---- rotary positions --------------------------------------------------------------------------
def rotate(x: torch.Tensor, positions: list[int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """x (B, H, T, d) rotated at the given positions by the library's Rotary."""
    rot = Rotary(head_dim, theta)
    cos, sin = rot.cos_sin(torch.tensor([positions]), x.dtype)
    return apply_rotary(x, cos, sin)


def test_rope_preserves_norms():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 16)
    y = rotate(x, [0, 1, 2, 5, 17, 100, 511, 1000, 2047], 16)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    # position 0 is the identity
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0], atol=0, rtol=0)


@pytest.mark.parametrize("head_dim", [8, 16])
def test_rope_dot_product_depends_only_on_relative_offset(head_dim):
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(head_dim), dim=0).view(1, 1, 1, head_dim)
    k = torch.nn.functional.normalize(torch.randn(head_dim), dim=0).view(1, 1, 1, head_dim)

    def score(m: int, n: int) -> float:
        return float((rotate(q, [m], head_dim) * rotate(k, [n], head_dim)).sum())

    for m, n in [(0, 0), (3, 1), (1, 3), (10, 2), (7, 7)]:
        for shift in (1, 5, 40):
            assert abs(score(m, n) - score(m + shift, n + shift)) < 1e-5, (m, n, shift)
    # ... and it does depend on the offset
    assert abs(score(3, 1) - score(3, 2)) > 1e-3
    assert abs(score(3, 1) - score(1, 3)) > 1e-4  # rotation direction matters: not symmetric in m - n


def test_rope_pairs_dimension_j_with_j_plus_half():
    """NeoX/LLaMA pairing, written out: (x_j, x_{j+d/2}) rotates by the angle pos·θ^(-2j/d)."""
    d, theta = 8, 10000.0
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, d, dtype=torch.float64)
    positions = [0, 1, 2, 7, 30]
    got = rotate(x, positions, d, theta)
    expected = torch.empty_like(x)
    for h in range(2):
        for t, pos in enumerate(positions):
            for j in range(d // 2):
                angle = pos * theta ** (-2 * j / d)
                a, b = x[0, h, t, j].item(), x[0, h, t, j + d // 2].item()
                expected[0, h, t, j] = a * math.cos(angle) - b * math.sin(angle)
                expected[0, h, t, j + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    # the library builds its angles in fp32 (as LLaMA does), hence 1e-5 rather than 1e-12
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the GPT-J interleaved pairing (2j, 2j+1) is a different rotation
    interleaved = x.clone()
    for t, pos in enumerate(positions):
        for j in range(d // 2):
            angle = pos * theta ** (-2 * j / d)
            a, b = x[0, :, t, 2 * j], x[0, :, t, 2 * j + 1]
            interleaved[0, :, t, 2 * j] = a * math.cos(angle) - b * math.sin(angle)
            interleaved[0, :, t, 2 * j + 1] = b * math.cos(angle) + a * math.sin(angle)
    assert (got - interleaved).abs().max() > 1e-2


def test_rope_matches_transformers_llama_if_available():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    cos, sin = Rotary(16, 500000.0).cos_sin(positions, torch.float32)  # (B, 1, T, d)
    hf_q, hf_k = llama.apply_rotary_pos_emb(
        q, k, cos[:, 0], sin[:, 0]
    )  # HF takes (B, T, d), unsqueezes dim 1
    torch.testing.assert_close(apply_rotary(q, cos, sin), hf_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rotary(k, cos, sin), hf_k, atol=1e-6, rtol=0)


# ---- T5 relative position buckets --------------------------------------------------------------
def t5_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5 (Raffel et al. 2020, §2.1), restated: offsets (key - query) map to buckets; half the buckets
    (per direction if bidirectional) hold exact small distances, the rest are logarithmically wider up
    to max_distance, and everything beyond shares the last bucket. A causal stack only looks back."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        if relative > 0:  # keys after the query use the upper half
            bucket += num_buckets
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = num_buckets // 2
    if distance < exact:
        return bucket + distance
    log_bucket = exact + int(
        math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    )
    return bucket + min(log_bucket, num_buckets - 1)


# hand-checked values for T5's defaults (32 buckets, max distance 128):
# bidirectional: 16 buckets a side, exact below 8, then 8 + floor(2·log2(d/8)); keys after the query + 16
KNOWN_BIDIRECTIONAL = {
    0: 0,
    -1: 1,
    -7: 7,
    -8: 8,
    -11: 8,
    -12: 9,
    -16: 10,
    -31: 11,
    -33: 12,
    -90: 14,
    -91: 15,
    -127: 15,
    -128: 15,
    -1000: 15,
    1: 17,
    7: 23,
    8: 24,
    12: 25,
    1000: 31,
}
# causal: exact below 16, then 16 + floor(16/3·log2(d/16)); any key after the query -> bucket 0
KNOWN_CAUSAL = {
    0: 0,
    1: 0,
    5: 0,
    -1: 1,
    -15: 15,
    -16: 16,
    -31: 21,
    -32: 21,
    -63: 26,
    -65: 26,
    -127: 31,
    -1000: 31,
}


def test_relative_bucket_known_values():
    for table, bidirectional in ((KNOWN_BIDIRECTIONAL, True), (KNOWN_CAUSAL, False)):
        offsets = torch.tensor(list(table))
        got = relative_position_bucket(offsets, bidirectional, 32, 128).tolist()
        assert dict(zip(table, got)) == table
        assert {r: t5_bucket(r, bidirectional, 32, 128) for r in table} == table


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 64), (8, 20)])
def test_relative_bucket_matches_independent_implementation(bidirectional, num_buckets, max_distance):
    offsets = torch.arange(-300, 301)
    got = relative_position_bucket(offsets, bidirectional, num_buckets, max_distance).tolist()
    assert got == [t5_bucket(r, bidirectional, num_buckets, max_distance) for r in offsets.tolist()]


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bucket_matches_transformers_t5(bidirectional):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    offsets = torch.arange(-600, 600)[None, :] - torch.arange(0, 3)[:, None]  # 2D like key - query grids
    for num_buckets, max_distance in ((32, 128), (16, 64), (8, 20)):
        ours = relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
        theirs = t5.T5Attention._relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
        assert torch.equal(ours, theirs)


def test_relative_position_bias_reads_the_bucket_table():
    cfg = config(position="relative", relative_buckets=16, relative_max_distance=32)
    torch.manual_seed(0)
    for bidirectional in (True, False):
        bias = RelativePositionBias(cfg, bidirectional)
        out = bias(3, 7, past=4)  # queries at absolute positions 4, 5, 6
        assert out.shape == (1, cfg.n_head, 3, 7)
        for i in range(3):
            for j in range(7):
                bucket = t5_bucket(j - (4 + i), bidirectional, 16, 32)
                torch.testing.assert_close(out[0, :, i, j], bias.bias.weight[bucket], atol=0, rtol=0)


# ---- norms -------------------------------------------------------------------------------------
def test_rmsnorm_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 4, 8)
    y = norm(x)
    for b in range(3):
        for t in range(4):
            row = x[b, t].tolist()
            rms = math.sqrt(sum(v * v for v in row) / len(row) + 1e-6)
            for c in range(8):
                assert abs(y[b, t, c].item() - row[c] / rms * norm.weight[c].item()) < 1e-5
    # no mean subtraction: unlike LayerNorm, a constant row keeps its sign
    torch.testing.assert_close(RMSNorm(4)(torch.full((1, 4), 3.0)), torch.ones(1, 4), atol=1e-6, rtol=0)
    # a bf16 model gives bf16 out; the statistics are computed in fp32, so it matches the fp32 result
    low = RMSNorm(8, eps=1e-6).to(torch.bfloat16)
    low.load_state_dict(norm.state_dict())
    y_low = low(x.to(torch.bfloat16))
    assert y_low.dtype == torch.bfloat16
    torch.testing.assert_close(y_low.float(), y, atol=0.05, rtol=0.02)


def test_make_norm_choices():
    assert isinstance(make_norm(config(norm="rmsnorm")), RMSNorm)
    layer_norm = make_norm(config(norm_eps=1e-12))
    assert isinstance(layer_norm, nn.LayerNorm) and layer_norm.bias is not None and layer_norm.eps == 1e-12
    assert make_norm(config(norm_bias=False)).bias is None


# ---- feed-forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_gate_comes_first(bias):
    cfg = config(gated_mlp=True, activation="silu", mlp_bias=bias)
    torch.manual_seed(0)
    mlp = MLP(cfg).eval()
    if bias:
        for p in (mlp.fc_in.bias, mlp.fc_out.bias):
            nn.init.normal_(p)
    x = torch.randn(2, 5, cfg.d_model)
    w_gate, w_up = mlp.fc_in.weight[: cfg.d_ff], mlp.fc_in.weight[cfg.d_ff :]
    b_gate, b_up = (mlp.fc_in.bias[: cfg.d_ff], mlp.fc_in.bias[cfg.d_ff :]) if bias else (0, 0)
    b_out = mlp.fc_out.bias if bias else 0
    gate = x @ w_gate.T + b_gate
    silu = gate * torch.sigmoid(gate)
    expected = (silu * (x @ w_up.T + b_up)) @ mlp.fc_out.weight.T + b_out
    assert mlp.fc_in.weight.shape == (2 * cfg.d_ff, cfg.d_model)
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)
    # swapping gate and up is a different function
    swapped_gate = x @ w_up.T + b_up
    swapped = (swapped_gate * torch.sigmoid(swapped_gate) * gate) @ mlp.fc_out.weight.T + b_out
    assert (mlp(x) - swapped).abs().max() > 1e-4


def test_plain_mlp():
    cfg = config(activation="relu")
    torch.manual_seed(0)
    mlp = MLP(cfg).eval()
    x = torch.randn(2, 3, cfg.d_model)
    expected = torch.relu(x @ mlp.fc_in.weight.T + mlp.fc_in.bias) @ mlp.fc_out.weight.T + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)
    assert mlp.fc_in.weight.shape == (cfg.d_ff, cfg.d_model)


def test_gelu_exact_and_tanh_approximation_differ():
    xs = [i / 10 for i in range(-40, 41)]
    x = torch.tensor(xs, dtype=torch.float64)
    exact, approx = activation_fn("gelu")(x), activation_fn("gelu_tanh")(x)
    for v, e, a in zip(xs, exact.tolist(), approx.tolist()):
        assert abs(e - 0.5 * v * (1 + math.erf(v / math.sqrt(2)))) < 1e-12
        assert abs(a - 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))) < 1e-12
    gap = (exact - approx).abs().max().item()
    assert 1e-5 < gap < 1e-2  # close, but not the same function: checkpoints must name the right one
    torch.manual_seed(0)
    mlp_exact = MLP(config(activation="gelu"))
    mlp_tanh = MLP(config(activation="gelu_tanh"))
    mlp_tanh.load_state_dict(mlp_exact.state_dict())
    h = torch.randn(4, 32) * 3
    assert (mlp_exact(h) - mlp_tanh(h)).abs().max() > 1e-7
    assert activation_fn("silu")(torch.tensor([1.0])).item() == pytest.approx(1 / (1 + math.exp(-1)))
