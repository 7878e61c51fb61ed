"""Training on the real tokens only (plmkit.model.padding): a bidirectional stack's training forward of a
padded batch computes its projections and feed-forwards on the real tokens, and gives the padded forward's
losses and gradients (1e-5) for every head and family that reads a padded encoder, while evaluation keeps
the padded layout."""

from __future__ import annotations

import pytest
import torch
from test_gradient_checkpointing import build, loss_of, stacks

from plmkit.model.padding import PaddingIndex

CASES = ["seq2seq-t5", "electra", "classifier-masked", "tokens-masked", "qa-masked", "encoder-masked"]


def run(model, batch, case: str, skip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, gradients, the first stack's output) with the real-token path on or off."""
    for stack in stacks(model):
        stack.skip_padding = skip
    model.zero_grad(set_to_none=True)
    if hasattr(model, "sampling_generator"):
        model.sampling_generator = None  # ELECTRA: restart the replacement sampler, same corruption
    out = model(**batch)
    loss = loss_of(case, out) if not case.startswith("encoder") else real_token_loss(out, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, getattr(out, "hidden_states", None)


def real_token_loss(out, batch) -> torch.Tensor:
    """A loss of the bare encoder that reads the real positions only (what every head does)."""
    real = batch["attention_mask"].bool()
    return out.hidden_states[real].pow(2).mean() + out.pooled.sum()


@pytest.mark.parametrize("case", CASES)
def test_real_tokens_only_gives_the_padded_losses_and_gradients(case, monkeypatch):
    model, batch = build(case)
    if case == "electra":  # a masked-LM label on a padding position reads the padding: real batches never do
        batch["labels"] = batch["labels"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()  # dropout is 0 in these configs
    calls = []
    rows = PaddingIndex.rows
    monkeypatch.setattr(PaddingIndex, "rows", lambda self, x: calls.append(x.shape) or rows(self, x))
    loss, grads, hidden = run(model, batch, case, skip=True)
    assert calls, "the real-token path did not run"
    assert all(shape[0] == int(batch["attention_mask"].sum()) for shape in calls if len(shape) == 2)
    calls.clear()
    padded_loss, padded_grads, padded_hidden = run(model, batch, case, skip=False)
    assert not calls
    assert torch.allclose(loss, padded_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == padded_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, padded_grads[name], atol=1e-5, rtol=1e-4), name
    if case.startswith("encoder"):
        real = batch["attention_mask"].bool()
        assert torch.allclose(hidden[real], padded_hidden[real], atol=1e-5)
        assert torch.count_nonzero(hidden[~real]) == 0  # the padding positions come out as zeros


def test_evaluation_and_unpadded_batches_keep_the_padded_layout(monkeypatch):
    model, batch = build("encoder-masked")
    calls = []
    monkeypatch.setattr(PaddingIndex, "rows", lambda self, x: calls.append(1) or x)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["attention_mask"]))
    with torch.no_grad():
        model(**batch)
    assert not calls


def test_padding_index_round_trip():
    keep = torch.tensor([[True, True, False], [True, False, False]])
    index = PaddingIndex.from_key_mask(keep[:, None, None, :])
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    rows = index.rows(x)
    assert rows.tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]
    assert torch.equal(index.pad(rows), x * keep[..., None])
    assert PaddingIndex.from_key_mask(torch.ones(2, 1, 1, 3, dtype=torch.bool)) is None
    assert PaddingIndex.from_key_mask(torch.ones(2, 1, 3, 3, dtype=torch.bool)) is None  # not key padding
