"""The LMs' training loss path (LMHead.loss, losses.linear_token_loss): the same loss and gradients as
the full logits + token_loss, without making the full logits; logits still come when asked for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmkit.model import losses
from plmkit.model.losses import linear_token_loss, token_loss
from tiny import VOCAB, tiny_model


def batch(seed: int = 1, masked_share: float | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    labels = ids.clone()
    if masked_share is not None:  # MLM: labels at a few positions only
        labels[torch.rand(ids.shape, generator=g) >= masked_share] = -100
    else:
        labels[0, 7:] = -100
    return {"input_ids": ids, "labels": labels}


def reference(model, b):
    """The unfused path: every position's logits, then token_loss."""
    if hasattr(model, "shift_right"):  # seq2seq: the decoder reads the labels shifted right
        out = model(b["input_ids"], decoder_input_ids=model.shift_right(b["labels"]))
    else:
        out = model(b["input_ids"])
    return token_loss(out.logits, b["labels"], getattr(model, "shift_labels", False))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("causal", {}),
        ("masked", {"lm_head_transform": True, "lm_head_bias": True}),
        ("masked", {"tie_embeddings": False}),
        ("prefix", {}),
        ("seq2seq", {}),
    ],
)
def test_lm_loss_and_gradients_equal_the_full_logits_path(family, overrides, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 5 * VOCAB)  # several chunks, the last one short
    model = tiny_model(family, dropout=0.0, attention_dropout=0.0, **overrides)
    b = batch(masked_share=0.3 if family == "masked" else None)
    expected_sum, expected_count = reference(model, b)
    (expected_sum / expected_count).backward()
    expected_grads = grads(model)
    model.zero_grad(set_to_none=True)
    out = model(**b)
    out.loss.backward()
    assert int(out.targets) == int(expected_count)
    assert torch.allclose(out.loss_sum, expected_sum, rtol=1e-6, atol=1e-6)
    got = grads(model)
    assert got.keys() == expected_grads.keys()
    for name, g in got.items():
        assert torch.allclose(g, expected_grads[name], rtol=1e-5, atol=1e-6), name


def test_logits_come_with_labels_only_when_asked():
    model = tiny_model("masked", dropout=0.0, attention_dropout=0.0)
    b = batch(masked_share=0.3)
    out = model(**b)
    assert out.logits is None and "logits" not in out.keys() and out.loss is not None
    full = model(**b, compute_logits=True)
    assert torch.equal(full.logits, model(b["input_ids"]).logits)
    assert torch.allclose(full.loss, out.loss, rtol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_token_loss_matches_linear_plus_cross_entropy(bias, monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 4 * 50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 8, generator=g, requires_grad=True)
    w = torch.randn(50, 8, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True) if bias else None
    targets = torch.randint(0, 50, (13,), generator=g)
    got = linear_token_loss(x, w, b, targets)
    expected = F.cross_entropy(F.linear(x, w, b), targets, reduction="sum")
    assert torch.allclose(got, expected, rtol=1e-6)
    inputs = [t for t in (x, w, b) if t is not None]
    g_got = torch.autograd.grad(got * 0.7, inputs)
    g_expected = torch.autograd.grad(expected * 0.7, inputs)
    for a, e in zip(g_got, g_expected, strict=True):
        assert torch.allclose(a, e, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # evaluation: no gradients made, the same loss
        assert torch.allclose(linear_token_loss(x, w, b, targets), expected, rtol=1e-6)


def test_linear_token_loss_under_bf16_autocast_matches_the_autocast_linear():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 16, generator=g, requires_grad=True)
    w = torch.randn(40, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (9,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_token_loss(x, w, None, targets)
        expected = F.cross_entropy(F.linear(x, w).float(), targets, reduction="sum")
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5)
    gx, gw = torch.autograd.grad(got, (x, w))
    ex, ew = torch.autograd.grad(expected, (x, w))
    assert gx.dtype == x.dtype and gw.dtype == w.dtype
    assert torch.allclose(gx, ex, rtol=2e-2, atol=2e-2) and torch.allclose(gw, ew, rtol=2e-2, atol=2e-2)
