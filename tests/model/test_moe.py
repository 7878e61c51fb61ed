"""The mixture-of-experts feed-forward (plmkit.model.moe): dispatch equal to routing token by token,
the grouped product equal to one matmul per expert, capacity drops counted, the router losses on the
(sum, count) contract, every family, gradient checkpointing, decoding, and the config's errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError
from plmkit.generation import generate_ids
from plmkit.model import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from plmkit.model import moe as M
from plmkit.model import moe_losses as L

V = 64


def config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=V, d_model=32, n_layer=2, n_head=4, d_ff=48, max_positions=64, n_experts=4, top_k=2
    )
    return ModelConfig(**{**base, **kw})


def layer(seed: int = 0, **kw) -> M.MoE:
    """An MoE layer with every weight (biases included) random."""
    torch.manual_seed(seed)
    moe = M.MoE(config(**kw))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


def token_by_token(moe: M.MoE, x: torch.Tensor) -> torch.Tensor:
    """The definition, one token and one chosen expert at a time: sum_j w_j expert_{e_j}(x) (+ shared)."""
    xs = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(moe.router(xs).float(), dim=-1)
    out = torch.zeros_like(xs)
    ex = moe.experts
    for n in range(xs.shape[0]):
        weights, chosen = probs[n].topk(moe.top_k)
        if moe.norm_topk_prob:
            weights = weights / weights.sum()
        for w, e in zip(weights, chosen):
            h = ex.fc_in[e] @ xs[n] + (ex.fc_in_bias[e] if ex.fc_in_bias is not None else 0)
            if ex.gated:
                gate, up = h.chunk(2)
                h = ex.act(gate) * up
            else:
                h = ex.act(h)
            y = ex.fc_out[e] @ h + (ex.fc_out_bias[e] if ex.fc_out_bias is not None else 0)
            out[n] += w * y
    if moe.shared is not None:
        shared = moe.shared(xs)
        if moe.shared_gate is not None:
            shared = torch.sigmoid(moe.shared_gate(xs)) * shared
        out = out + shared
    return out.reshape(x.shape)


VARIANTS = {
    "mixtral": dict(gated_mlp=True, activation="silu", mlp_bias=False),
    "plain-bias": dict(gated_mlp=False, activation="gelu", mlp_bias=True, top_k=1),
    "qwen2-moe": dict(
        gated_mlp=True,
        activation="silu",
        mlp_bias=False,
        norm_topk_prob=False,
        expert_d_ff=16,
        n_shared_experts=1,
        shared_expert_d_ff=40,
        shared_expert_gate=True,
    ),
    "deepseek-shared": dict(gated_mlp=True, activation="silu", n_shared_experts=2, top_k=3),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dispatch_equals_routing_token_by_token(name):
    moe = layer(**VARIANTS[name]).eval()
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (moe(x) - token_by_token(moe, x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["mixtral", "plain-bias"])
def test_grouped_mm_and_one_matmul_per_expert_agree_with_gradients(name, monkeypatch):
    x = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(2))
    results = []
    for grouped in (True, False):
        moe = layer(**VARIANTS[name])
        monkeypatch.setattr(M, "_grouped_mm_runs", lambda *a, grouped=grouped: grouped)
        xi = x.clone().requires_grad_()
        out = moe(xi)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
        grads = [p.grad.clone() for p in moe.parameters()]
        results.append((out.detach(), xi.grad, grads))
    (a, ga, pa), (b, gb, pb) = results
    assert (a - b).abs().max() < 1e-5 and (ga - gb).abs().max() < 1e-5
    assert all((p - q).abs().max() < 1e-4 for p, q in zip(pa, pb))


def test_grouped_mm_is_used_for_aligned_fp32_on_cpu():
    if not hasattr(F, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    w = torch.randn(4, 48, 32)
    assert M._grouped_mm_runs(torch.randn(5, 32), w)
    assert not M._grouped_mm_runs(torch.randn(5, 30), torch.randn(4, 48, 30))  # rows not 16-byte multiples


def test_top_k_renormalised_is_the_softmax_over_the_top_k_logits():
    moe = layer(gated_mlp=True, activation="silu", top_k=2)
    x = torch.randn(10, 32)
    logits, weights, experts = moe.route(x)
    top_logits = logits.gather(-1, experts)
    assert torch.allclose(weights, torch.softmax(top_logits, dim=-1), atol=1e-6)
    moe.norm_topk_prob = False  # Qwen2-MoE: the full softmax's probabilities
    _, raw, _ = moe.route(x)
    assert torch.allclose(raw, torch.softmax(logits, -1).gather(-1, experts), atol=1e-6)


def test_capacity_drops_the_overflow_counts_it_and_only_in_training():
    moe = layer(gated_mlp=True, activation="silu", top_k=2, capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0, then expert 1
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 5.0, 2.0
    x = torch.randn(12, 32).abs() + 0.5  # feature 0 positive: the same two experts for all
    x[:, 0] = 1.0
    capacity = math.ceil(1.0 * 12 * 2 / 4)  # 6 assignments per expert
    with M.recording(moe_config := config(capacity_factor=1.0)) as routings:
        moe.train()
        out = moe(x)
    assert moe_config.n_experts == 4
    assert routings[0].counts.tolist() == [12, 12, 0, 0]
    assert int(routings[0].dropped) == 2 * (12 - capacity)
    # the first `capacity` tokens keep both experts, the rest lose both: their output is zero
    reference = token_by_token(moe, x)
    assert torch.allclose(out[:capacity], reference[:capacity], atol=1e-5)
    assert out[capacity:].abs().max() == 0
    with M.recording(moe_config) as routings:
        moe.eval()
        assert torch.allclose(moe(x), reference, atol=1e-5)  # evaluation is dropless
    assert int(routings[0].dropped) == 0


def test_capacity_keeps_first_choices_before_second_choices():
    """Each expert keeps the first choices in token order, then the second choices, up to capacity."""
    moe = layer(gated_mlp=True, activation="silu", mlp_bias=False, top_k=2, capacity_factor=0.5).train()
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(4))
    _, weights, experts = moe.route(x)
    capacity = math.ceil(0.5 * 40 * 2 / 4)
    taken = [0] * 4
    kept = torch.zeros(40, 2, dtype=torch.bool)
    for slot in range(2):
        for n in range(40):
            e = int(experts[n, slot])
            kept[n, slot] = taken[e] < capacity
            taken[e] += 1
    expected = torch.zeros_like(x)
    with torch.no_grad():
        for n in range(40):
            for slot in range(2):
                if kept[n, slot]:
                    e = int(experts[n, slot])
                    gate, up = (moe.experts.fc_in[e] @ x[n]).chunk(2)
                    expected[n] += weights[n, slot] * (moe.experts.fc_out[e] @ (F.silu(gate) * up))
    with M.recording(config()) as routings, torch.no_grad():
        out = moe(x)
    assert int(routings[0].dropped) == int((~kept).sum()) > 0
    assert (out - expected).abs().max() < 1e-5


def test_load_balancing_loss_equals_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(5)
    logits = tuple(torch.randn(2 * 7, 6, generator=g) for _ in range(3))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    assert transformers is not None
    for top_k in (1, 2):
        for m in (None, mask):
            ours = L.load_balancing_loss(logits, 6, top_k, m)
            theirs = load_balancing_loss_func(logits, 6, top_k, m)
            assert torch.allclose(ours, theirs, atol=1e-6), (top_k, m)


def test_router_z_loss_is_the_mean_squared_logsumexp():
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g))
    expected = torch.cat([torch.logsumexp(x, -1) ** 2 for x in logits]).mean()
    assert torch.allclose(L.router_z_loss(logits), expected)
    mask = torch.tensor([1, 1, 0, 1, 0])
    kept = torch.cat([torch.logsumexp(x, -1)[mask.bool()] ** 2 for x in logits]).mean()
    assert torch.allclose(L.router_z_loss(logits, mask), kept)


def causal(seed: int = 0, **kw) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(config(gated_mlp=True, activation="silu", **kw))


def test_training_loss_adds_the_weighted_router_losses_on_the_sum_count_contract():
    model = causal(router_aux_loss_coef=0.1, router_z_loss_coef=0.01)
    ids = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        ce = model(ids, labels=ids)
    model.train()
    out = model(ids, labels=ids)
    assert out.loss_sum is not None and int(out.targets) == 3 * 9
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (30, 4)
    penalty = 0.1 * out.aux_loss + 0.01 * out.z_loss
    assert torch.allclose(out.loss_sum, ce.loss_sum + penalty * out.targets, atol=1e-4)
    assert torch.allclose(out.loss, ce.loss + penalty, atol=1e-6)
    # evaluation reports the router losses apart and leaves the loss the cross entropy
    assert torch.allclose(ce.aux_loss, out.aux_loss) and torch.allclose(ce.z_loss, out.z_loss)
    assert out.expert_counts.shape == (2, 4) and int(out.expert_counts.sum()) == 2 * 30 * 2
    out.loss.backward()
    assert model.transformer.blocks[0].mlp.router.weight.grad.abs().sum() > 0


def test_router_losses_leave_out_pads():
    model = causal().train()
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    out = model(ids, attention_mask=mask)
    assert torch.allclose(out.aux_loss, L.load_balancing_loss(out.router_logits, 4, 2, mask))
    assert not torch.allclose(out.aux_loss, L.load_balancing_loss(out.router_logits, 4, 2))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(9))
    grads = []
    for checkpointing in (False, True):
        model = causal(router_z_loss_coef=0.01).train()
        model.set_gradient_checkpointing(checkpointing)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("cls", [MaskedLM, PrefixLM, Seq2SeqLM])
def test_every_family_routes(cls):
    family = {MaskedLM: "masked", PrefixLM: "prefix", Seq2SeqLM: "seq2seq"}[cls]
    torch.manual_seed(0)
    model = cls(config(family=family, moe_every=2, n_layer=2)).train()
    blocks = [model.encoder.blocks, model.decoder.blocks] if cls is Seq2SeqLM else [model.transformer.blocks]
    for stack in blocks:  # moe_every=2: block 1 routes, block 0 is dense
        assert not isinstance(stack[0].mlp, M.MoE) and isinstance(stack[1].mlp, M.MoE)
    ids = torch.randint(1, V, (2, 6))
    labels = ids.clone()
    labels[:, ::2] = -100
    out = model(ids, labels=labels)
    assert torch.isfinite(out.loss) and len(out.router_logits) == len(blocks)
    out.loss.backward()


def test_greedy_decoding_equals_full_forwards():
    model = causal(seed=3).eval()
    prompt = torch.randint(1, V, (1, 5), generator=torch.Generator().manual_seed(10))
    ids = prompt
    for _ in range(6):  # no cache: the whole sequence each time
        with torch.no_grad():
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    out = generate_ids(model, prompt, max_new_tokens=6, eos_token_id=None)
    assert out.tolist() == ids[:, 5:].tolist()


def test_router_tally_sums_forwards_and_reports_balance():
    tally = L.RouterTally()
    assert tally.metrics() == {}
    model = causal(capacity_factor=0.5).train()
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(11))
    outs = [model(ids, labels=ids) for _ in range(2)]
    for out in outs:
        tally.add(out)
    metrics = tally.metrics()
    counts = outs[0].expert_counts + outs[1].expert_counts
    assert metrics["moe_tokens_per_expert"] == counts.sum(0).tolist()
    assert metrics["moe_load_cv"] == pytest.approx(L.load_cv(counts))
    assert metrics["moe_dropped"] == int(outs[0].dropped.sum() + outs[1].dropped.sum()) > 0
    assert 0 < metrics["moe_dropped_fraction"] < 1
    assert metrics["moe_aux_loss"] == pytest.approx(float(outs[0].aux_loss + outs[1].aux_loss) / 2)
    assert L.load_cv(torch.tensor([5, 5, 5, 5])) == 0.0
    doubled = tally.metrics(lambda *v: tuple(2 * x for x in v))  # two ranks alike
    assert doubled["moe_tokens_per_expert"] == [2 * c for c in metrics["moe_tokens_per_expert"]]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_experts=4, top_k=5), "model.top_k=5 must be between 1 and model.n_experts=4"),
        (dict(n_experts=0), "model.n_experts=0 is out of range: must be >= 1, or null for a dense MLP"),
        (
            dict(n_experts=None, n_shared_experts=1),
            "model.n_shared_experts is set but model.n_experts is null",
        ),
        (
            dict(n_experts=4, shared_expert_gate=True),
            "model.shared_expert_gate is set but model.n_shared_experts=0",
        ),
        (dict(n_experts=4, moe_every=3), "model.moe_every=3 is more than model.n_layer=2"),
        (dict(n_experts=4, capacity_factor=0.0), "model.capacity_factor=0.0 is out of range"),
    ],
)
def test_bad_expert_settings_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(**fields)


def test_tensor_parallel_refuses_experts():
    from plmkit.train.distributed.tensor_parallel import check_tensor_parallel

    with pytest.raises(ConfigError, match="routed experts"):
        check_tensor_parallel(config(), 2)
