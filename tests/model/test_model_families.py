"""The four family models: KV-cache decoding equals recomputation, every family learns, label
conventions, task heads, gradient checkpointing and weight tying."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from plmkit.model import (
    ModelConfig,
    RewardModel,
    SequenceClassifier,
    SpanQA,
    TokenClassifier,
    pairwise_ranking_loss,
    reorder_cache,
)
from plmkit.model.heads import pool
from tiny import tiny_model

VOCAB = 64
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64)
# decoder configurations worth decoding with a cache
CAUSAL_VARIANTS = {
    "learned": {},
    "sinusoidal": {"position": "sinusoidal"},
    "rotary-gqa": {
        "position": "rotary",
        "n_kv_head": 2,
        "norm": "rmsnorm",
        "gated_mlp": True,
        "activation": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_embeddings": False,
    },
    "rotary-mqa": {"position": "rotary", "n_kv_head": 1},
    "relative": {
        "position": "relative",
        "norm": "rmsnorm",
        "attention_scale": 1.0,
        "relative_buckets": 8,
        "relative_max_distance": 16,
    },
    "post-norm": {"pre_norm": False, "embedding_norm": True, "final_norm": False},
}
BART_STYLE = {
    "position_offset": 2,
    "pre_norm": False,
    "embedding_norm": True,
    "final_norm": False,
    "pad_token_id": 1,
    "decoder_start_token_id": 2,
}
T5_STYLE = {
    "position": "relative",
    "norm": "rmsnorm",
    "norm_bias": False,
    "activation": "relu",
    "attention_bias": False,
    "mlp_bias": False,
    "attention_scale": 1.0,
    "tied_output_scale": True,
    "relative_buckets": 8,
    "relative_max_distance": 16,
    "head_dim": 16,
}


tiny = partial(tiny_model, **TINY)  # tiny(family, seed=0, **overrides)


def random_ids(shape: tuple[int, ...], seed: int = 1, low: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, VOCAB, shape, generator=g)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ---- KV cache == recompute ---------------------------------------------------------------------
def decode_in_pieces(step, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Feed ids[:, a:b] for consecutive cut points with the cache; concatenate the logits.
    step(chunk, start, end, past) -> ModelOutput."""
    past, pieces = None, []
    bounds = [0, *cuts, ids.shape[1]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        out = step(ids[:, a:b], a, b, past)
        past = out.past_key_values
        assert len(past) == 2 and past[0][0].shape[2] == b  # one entry per layer, keys for every token
        pieces.append(out.logits)
    return torch.cat(pieces, dim=1)


CUTS = [4, 5, 6, 8, 9]  # a prompt of 4, single tokens, then a chunk of 2


@pytest.mark.parametrize("variant", list(CAUSAL_VARIANTS))
@torch.no_grad()
def test_causal_kv_cache_equals_recompute(variant):
    model = tiny("causal", **CAUSAL_VARIANTS[variant])
    ids = random_ids((2, 11))
    full = model(ids).logits
    cached = decode_in_pieces(lambda x, a, b, past: model(x, past_key_values=past, use_cache=True), ids, CUTS)
    close(cached, full)
    # the cache also works with an explicit all-ones mask covering past + new tokens
    ones = torch.ones_like(ids)
    masked = decode_in_pieces(
        lambda x, a, b, past: model(x, attention_mask=ones[:, :b], past_key_values=past, use_cache=True),
        ids,
        CUTS,
    )
    close(masked, full)


@pytest.mark.parametrize("variant", ["learned", "rotary-gqa", "relative"])
@torch.no_grad()
def test_causal_kv_cache_left_padded_batch(variant):
    """Left padding as batched generation does it: position ids from the mask's cumsum, the mask covering
    cached + new tokens. Real positions match the full forward and the unpadded sequences."""
    model = tiny("causal", **CAUSAL_VARIANTS[variant])
    ids = random_ids((3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    # pads get position 0 (their value is irrelevant); see test_left_padding_negative_position_ids below
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions).logits
    cached = decode_in_pieces(
        lambda x, a, b, past: model(
            x,
            attention_mask=mask[:, :b],
            position_ids=positions[:, a:b],
            past_key_values=past,
            use_cache=True,
        ),
        ids,
        [5, 6, 7, 9],
    )
    real = mask.bool()
    close(cached[real], full[real])
    for row in range(3):
        alone = model(ids[row : row + 1, mask[row].bool()]).logits[0]
        close(full[row, mask[row].bool()], alone)


# Left-padded batches may use position_ids = cumsum(mask) - 1, which is -1 at the pads: absolute
# position tables must accept it (the pads are masked, so their position is irrelevant).
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
@torch.no_grad()
def test_left_padding_negative_position_ids(position):
    model = tiny("causal", position=position)
    ids = random_ids((2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = mask.cumsum(-1) - 1  # the contract's convention, -1 at the pads
    out = model(ids, attention_mask=mask, position_ids=positions).logits
    close(out[0, 2:], model(ids[:1, 2:]).logits[0])


@torch.no_grad()
def test_reorder_cache_selects_beams():
    model = tiny("causal", position="rotary")
    ids = random_ids((3, 7))
    out = model(ids[:, :5], use_cache=True)
    index = torch.tensor([2, 0, 2])
    past = reorder_cache(out.past_key_values, index)
    step = model(ids[index, 5:], past_key_values=past, use_cache=True).logits
    close(step, model(ids[index]).logits[:, 5:])


@pytest.mark.parametrize("variant", ["learned", "relative"])
@torch.no_grad()
def test_prefix_lm_kv_cache(variant):
    """UniLM/GLM decoding: the whole prefix in one bidirectional pass, then targets one at a time."""
    model = tiny("prefix", **CAUSAL_VARIANTS[variant])
    ids = random_ids((2, 10))
    prefix_lengths = torch.tensor([4, 4])
    full = model(ids, prefix_lengths=prefix_lengths).logits
    cached = decode_in_pieces(
        lambda x, a, b, past: model(x, prefix_lengths=prefix_lengths, past_key_values=past, use_cache=True),
        ids,
        [4, 5, 6, 8],
    )
    close(cached, full)
    # different prefix lengths per example, prefix in one pass up to the longest one
    lengths = torch.tensor([2, 5])
    full = model(ids, prefix_lengths=lengths).logits
    cached = decode_in_pieces(
        lambda x, a, b, past: model(x, prefix_lengths=lengths, past_key_values=past, use_cache=True),
        ids,
        [5, 6, 7],
    )
    close(cached, full)


@pytest.mark.parametrize("style", ["bart", "t5"])
@torch.no_grad()
def test_seq2seq_decoder_kv_cache(style):
    model = tiny("seq2seq", **(BART_STYLE if style == "bart" else T5_STYLE))
    src = random_ids((2, 9))
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    tgt = random_ids((2, 8), seed=2)
    full = model(src, attention_mask=src_mask, decoder_input_ids=tgt)
    memory = model.encode(src, src_mask)
    close(memory, full.encoder_hidden_states, atol=0)

    def step(x, a, b, past):
        out = model(
            attention_mask=src_mask,
            decoder_input_ids=x,
            encoder_hidden_states=memory,
            past_key_values=past,
            use_cache=True,
        )
        layer = out.past_key_values[0]
        assert len(layer) == 4 and layer[2].shape[2] == 9  # self k, v + cross k, v over the source
        return out

    cached = decode_in_pieces(step, tgt, [1, 2, 3, 5, 6])
    close(cached, full.logits)


# ---- every family learns -----------------------------------------------------------------------
def repeated_text(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(4, VOCAB, (40,), generator=g)
    return base, base.repeat(3)[None]  # (40,), (1, 120)


def batch_for(family: str) -> dict:
    base, text = repeated_text()
    if family == "causal":
        return dict(input_ids=text, labels=text)
    if family == "masked":
        where = torch.arange(3, text.shape[1], 5)  # fixed masked positions, [MASK] = 3
        inputs, labels = text.clone(), torch.full_like(text, -100)
        inputs[0, where], labels[0, where] = 3, text[0, where]
        return dict(input_ids=inputs, labels=labels)
    if family == "prefix":
        prefix = 40  # labels aligned: position t predicts token t+1 within the target part
        labels = torch.full_like(text, -100)
        labels[0, prefix - 1 : -1] = text[0, prefix:]
        return dict(input_ids=text, labels=labels, prefix_lengths=torch.tensor([prefix]))
    return dict(input_ids=base[None], labels=base.flip(0)[None])  # seq2seq: reverse the sequence


@pytest.mark.parametrize("family", ["causal", "masked", "prefix", "seq2seq"])
def test_family_learns_repeated_text(family):
    model = tiny(family, max_positions=128).train()
    batch = batch_for(family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.05 * losses[0]:
            break
    assert math.isclose(losses[0], math.log(VOCAB), rel_tol=0.15)  # starts near uniform
    assert losses[-1] < 0.1 * losses[0], f"{family}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# ---- label conventions -------------------------------------------------------------------------
def manual_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log p(target) over targets != -100, from log_softmax (not F.cross_entropy)."""
    logp = logits.log_softmax(-1)
    keep = targets != -100
    picked = logp[keep].gather(-1, targets[keep][:, None])
    return -picked.mean()


@torch.no_grad()
def test_causal_lm_shifts_labels_inside():
    model = tiny("causal")
    ids = random_ids((2, 8))
    out = model(ids, labels=ids)  # the loss only: no logits unless asked (compute_logits=True)
    logits = model(ids).logits
    close(out.loss, F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))
    close(out.loss, manual_ce(logits[:, :-1], ids[:, 1:]))
    labels = ids.clone()
    labels[0, :4] = -100  # e.g. a prompt that carries no loss
    labels[1, -1] = -100
    out = model(ids, labels=labels)
    close(out.loss, manual_ce(logits[:, :-1], labels[:, 1:]))
    close(model(ids, labels=labels, compute_logits=True).logits, logits, atol=0)
    assert out["loss"] is out.loss and "loss" in out.keys() and "past_key_values" not in out.keys()


@pytest.mark.parametrize("family", ["masked", "prefix"])
@torch.no_grad()
def test_aligned_labels_for_masked_and_prefix_lm(family):
    model = tiny(family)
    ids = random_ids((2, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 7] = 10, 11, 12
    out = model(ids, labels=labels)
    close(out.loss, manual_ce(model(ids).logits, labels))
    all_ignored = model(ids, labels=torch.full_like(ids, -100)).loss
    assert torch.isnan(all_ignored)  # mean over nothing, as torch's cross_entropy


@torch.no_grad()
def test_seq2seq_shifts_labels_right():
    model = tiny("seq2seq", **BART_STYLE)  # pad 1, decoder start 2
    labels = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100]])
    assert model.shift_right(labels).tolist() == [[2, 5, 6, 7], [2, 9, 10, 1]]
    src = random_ids((2, 5))
    out = model(src, labels=labels, compute_logits=True)
    explicit = model(src, decoder_input_ids=torch.tensor([[2, 5, 6, 7], [2, 9, 10, 1]]))
    close(out.logits, explicit.logits, atol=0)
    close(out.loss, manual_ce(out.logits, labels))
    close(model(src, labels=labels).loss, out.loss)  # the default: the loss without the logits
    # T5 convention: no decoder_start_token_id -> the pad id starts decoding
    t5 = tiny("seq2seq", **{**T5_STYLE, "pad_token_id": 0, "decoder_start_token_id": None})
    assert t5.shift_right(torch.tensor([[4, -100, 6]])).tolist() == [[0, 4, 0]]


# ---- task heads --------------------------------------------------------------------------------
def head_config(family: str = "causal", **kw) -> ModelConfig:
    return ModelConfig(family=family, **{**TINY, **kw})


def test_pool_cls_mean_last():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    close(pool(h, right, "cls"), h[:, 0], atol=0)
    close(pool(h, right, "mean"), torch.stack([h[0, :3].mean(0), h[1, :2].mean(0)]), atol=0)
    close(pool(h, right, "last"), torch.stack([h[0, 2], h[1, 1]]), atol=0)
    close(pool(h, left, "last"), h[:, 3], atol=0)
    close(pool(h, None, "last"), h[:, 3], atol=0)
    close(
        pool(h, torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]), "last"), torch.stack([h[0, 0], h[1, 3]]), atol=0
    )


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
@torch.no_grad()
def test_sequence_classifier(pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(head_config("masked"), num_labels=3, pooling=pooling).eval()
    ids = random_ids((2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.tensor([0, 2])
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, 3) and out.hidden_states.shape == (2, 7, 32)
    close(out.loss, F.cross_entropy(out.logits, labels))
    # right padding changes nothing for the padded example (learned positions stay aligned)
    close(out.logits[1], model(ids[1:, :5]).logits[0])
    regression = SequenceClassifier(head_config("masked"), num_labels=1, pooling=pooling).eval()
    out = regression(ids, attention_mask=mask, labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1)
    close(out.loss, ((out.logits.squeeze(-1) - torch.tensor([0.5, -1.0])) ** 2).mean())


@torch.no_grad()
def test_last_token_pooling_with_left_and_right_padding():
    """A causal classifier reads the last real token. With rotary positions the model is shift-invariant,
    so left- and right-padded copies must give the logits of the unpadded sequence."""
    torch.manual_seed(0)
    model = SequenceClassifier(head_config("causal", position="rotary"), num_labels=4, pooling="last").eval()
    reward = RewardModel(head_config("causal", position="rotary")).eval()
    seq = random_ids((1, 5))
    pad = torch.zeros(1, 3, dtype=torch.long)
    right_ids, left_ids = torch.cat((seq, pad), 1), torch.cat((pad, seq), 1)
    right_mask = torch.tensor([[1] * 5 + [0] * 3])
    left_mask = right_mask.flip(1)
    for m in (model, reward):
        attr = "logits" if m is model else "scores"
        alone = getattr(m(seq), attr)
        close(getattr(m(right_ids, attention_mask=right_mask), attr), alone)
        close(getattr(m(left_ids, attention_mask=left_mask), attr), alone)


@torch.no_grad()
def test_token_classifier():
    torch.manual_seed(0)
    model = TokenClassifier(head_config("masked"), num_labels=5).eval()
    ids = random_ids((2, 6))
    labels = torch.tensor([[0, 1, 2, -100, 4, 0], [1, -100, -100, 3, 3, -100]])
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 6, 5)
    close(out.loss, manual_ce(out.logits, labels))


@torch.no_grad()
def test_span_qa():
    torch.manual_seed(0)
    model = SpanQA(head_config("masked")).eval()
    ids = random_ids((2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    starts, ends = torch.tensor([1, 2]), torch.tensor([3, 5])
    out = model(ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    assert out.start_logits.shape == out.end_logits.shape == (2, 8)
    assert (out.start_logits[1, 6:] == torch.finfo(torch.float32).min).all()  # padding is never an answer
    assert (out.end_logits[1, 6:] == torch.finfo(torch.float32).min).all()
    expected = (F.cross_entropy(out.start_logits, starts) + F.cross_entropy(out.end_logits, ends)) / 2
    close(out.loss, expected)


@torch.no_grad()
def test_reward_model_scores_and_ranking_loss():
    torch.manual_seed(0)
    model = RewardModel(head_config("causal")).eval()
    ids = random_ids((2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = model(ids, attention_mask=mask, labels=torch.tensor([1.0, -1.0]))
    assert out.values.shape == (2, 6) and out.scores.shape == (2,)
    close(out.scores, torch.stack([out.values[0, 3], out.values[1, 5]]), atol=0)
    close(out.loss, ((out.scores - torch.tensor([1.0, -1.0])) ** 2).mean())
    # -log σ(r_chosen - r_rejected), averaged over pairs
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = (
        sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(chosen.tolist(), rejected.tolist())) / 3
    )
    assert pairwise_ranking_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    assert pairwise_ranking_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(
        math.log(2)
    )


# ---- gradient checkpointing --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["causal", "masked", "prefix", "seq2seq"])
def test_gradient_checkpointing_gives_identical_gradients(family):
    model = tiny(family, position="rotary" if family == "causal" else "learned").train()  # dropout is 0
    batch = batch_for(family)
    batch["input_ids"] = batch["input_ids"][:, :24]
    batch["labels"] = batch["labels"][:, :24]
    if family == "prefix":
        batch["prefix_lengths"] = torch.tensor([10])
        batch["labels"] = batch["input_ids"].masked_fill(torch.arange(24) < 10, -100)

    def grads():
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    block = (model.decoder if family == "seq2seq" else model.transformer).blocks[0]
    forward = block.forward
    block.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # count runs (hooks skip recompute)
    plain = grads()
    assert len(calls) == 1
    model.set_gradient_checkpointing(True)
    calls.clear()
    checkpointed = grads()
    assert len(calls) == 2  # the block really ran again during backward
    del block.forward
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        close(checkpointed[name], plain[name], atol=1e-6)
    model.set_gradient_checkpointing(False)
    again = grads()  # switched off again: the plain path, bit for bit
    assert all(torch.equal(again[name], plain[name]) for name in plain)


# ---- weight tying ------------------------------------------------------------------------------
def test_tied_and_untied_embeddings():
    tied, untied = tiny("causal"), tiny("causal", tie_embeddings=False)
    assert tied.lm_head.decoder.weight is tied.transformer.embed.tokens.weight
    assert untied.lm_head.decoder.weight is not untied.transformer.embed.tokens.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 32
    # a training step keeps them tied (one Parameter, one gradient)
    optimizer = torch.optim.SGD(tied.parameters(), lr=0.1)
    ids = random_ids((1, 6))
    tied(ids, labels=ids).loss.backward()
    optimizer.step()
    assert tied.lm_head.decoder.weight is tied.transformer.embed.tokens.weight
    masked = tiny("masked", lm_head_transform=True, lm_head_bias=True)
    assert masked.lm_head.decoder.weight is masked.transformer.embed.tokens.weight
    assert masked.lm_head.decoder.bias is not None


def test_seq2seq_shares_token_embeddings():
    model = tiny("seq2seq", **BART_STYLE)
    tokens = model.encoder.embed.tokens.weight
    assert model.decoder.embed.tokens.weight is tokens
    assert model.lm_head.decoder.weight is tokens
    assert model.encoder.embed.positions.weight is not model.decoder.embed.positions.weight
    names = [n for n, p in model.named_parameters() if p is tokens]
    assert len(names) == 1  # counted once
    untied = tiny("seq2seq", tie_embeddings=False)
    assert untied.decoder.embed.tokens.weight is untied.encoder.embed.tokens.weight
    assert untied.lm_head.decoder.weight is not untied.encoder.embed.tokens.weight
