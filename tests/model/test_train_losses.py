"""plmkit.model.losses: the (sum, count) contract the training loop and the evaluator build on."""

from __future__ import annotations

import pytest
import torch

from plmkit.model.losses import sequence_logprobs, token_loss
from tiny import tiny_model

VOCAB = 61


def tiny(family: str) -> torch.nn.Module:
    return tiny_model(family, n_head=2, dropout=0.0, attention_dropout=0.0)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    labels = ids.clone()
    labels[0, 7:] = -100
    labels[2, ::3] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("family", ["causal", "masked", "prefix", "seq2seq"])
def test_token_loss_sum_equals_the_models_mean_loss_times_count(family):
    model = tiny(family)
    b = batch()
    full = model(**b, compute_logits=True)  # logits asked for: the loss comes from them
    shift = getattr(model, "shift_labels", False)
    total, count = token_loss(full.logits, b["labels"], shift=shift)
    expected = int((b["labels"][:, 1:] if shift else b["labels"]).ne(-100).sum())
    assert int(count) == expected == int(full.targets)
    assert torch.allclose(full.loss * count, total, rtol=1e-6)
    assert torch.equal(full.loss_sum, total)
    # by default no logits: the loss runs on the labelled rows only, in chunks (the same terms, summed in
    # another order)
    out = model(**b)
    assert out.logits is None and int(out.targets) == expected
    assert torch.allclose(out.loss_sum, total, rtol=1e-6)


def test_token_loss_of_no_targets_is_a_zero_sum_with_clean_gradients():
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    total, count = token_loss(logits, torch.full((2, 5), -100))
    total.backward()
    assert total.item() == 0.0 and int(count) == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_sequence_logprobs_sum_the_label_tokens_log_probs_per_row():
    model = tiny("causal")
    b = batch()
    logits = model(b["input_ids"]).logits
    sums, counts = sequence_logprobs(logits, b["labels"], shift=True)
    logp = torch.log_softmax(logits.float(), -1)
    for row in range(3):
        want = sum(
            float(logp[row, t - 1, b["labels"][row, t]]) for t in range(1, 12) if b["labels"][row, t] != -100
        )
        assert float(sums[row]) == pytest.approx(want, abs=1e-5)
    total, count = token_loss(logits, b["labels"], shift=True)
    assert int(counts.sum()) == int(count) and float(-sums.sum()) == pytest.approx(float(total), rel=1e-5)
