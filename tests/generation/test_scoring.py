"""continuation_logprobs equals the log-softmax of one plain forward pass, for every family that
generates, in any batch order, and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from plmkit.errors import ShapeError
from plmkit.generation.scoring import continuation_logprobs

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
CONTINUATIONS = [[20, 21], [22], [23, 24, 25]]


def by_hand(model, prompt, continuation):
    family = model.config.family
    if family == "seq2seq":
        logits = model(
            torch.tensor([prompt]), labels=torch.tensor([continuation]), compute_logits=True
        ).logits
        return [float(logits[0, i].log_softmax(-1)[t]) for i, t in enumerate(continuation)]
    ids = torch.tensor([prompt + continuation])
    kwargs = {"prefix_lengths": torch.tensor([len(prompt)])} if family == "prefix" else {}
    logprobs = model(ids, **kwargs).logits[0].log_softmax(-1)
    return [float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(continuation)]


@pytest.mark.parametrize("family", ["causal", "prefix", "seq2seq"])
def test_equals_a_plain_forward(tiny_model, family):
    model = tiny_model(family, dropout=0.1).train()  # dropout is switched off for the call only
    scores = continuation_logprobs(model, PROMPTS, CONTINUATIONS, batch_size=2)
    assert model.training
    model.eval()
    for p, c, s in zip(PROMPTS, CONTINUATIONS, scores, strict=True):
        assert s == pytest.approx(by_hand(model, p, c), abs=1e-5)


def test_bad_input(tiny_model):
    with pytest.raises(ShapeError, match="continuation 0 is empty"):
        continuation_logprobs(tiny_model("causal"), [[1]], [[]])
    with pytest.raises(ShapeError, match="masked LM"):
        continuation_logprobs(tiny_model("masked"), [[1]], [[2]])
