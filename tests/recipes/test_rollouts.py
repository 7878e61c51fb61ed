"""Rollouts: shapes and masks of the right-padded batch, EOS flags, n samples per prompt, reproducible
with a seed, and the log-probs taken while sampling (KV cache) equal a recompute in one forward."""

from __future__ import annotations

import pytest
import torch

from plmkit.errors import DataError
from plmkit.generation import GenerationConfig
from plmkit.recipes.rollouts import frozen_logprobs, response_logprobs, sample_rollouts, token_logprobs
from tiny import tiny_model

EOS, PAD = 2, 0
PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]


def model_with_eos(seed: int = 0, **overrides) -> torch.nn.Module:
    model = tiny_model(
        "causal", seed=seed, eos_token_id=EOS, pad_token_id=PAD, lm_head_bias=True, **overrides
    )
    with torch.no_grad():  # make EOS likely, so that some rows stop early and some do not
        model.lm_head.decoder.bias[EOS] = 2.5
    return model


def sampling(**overrides) -> GenerationConfig:
    return GenerationConfig(do_sample=True, max_new_tokens=8, **overrides)


@pytest.fixture(scope="module")
def rollouts():
    torch.manual_seed(0)
    return sample_rollouts(model_with_eos(), PROMPTS, sampling(), n=3, seed=1)


def test_shapes_masks_and_layout(rollouts):
    b = len(PROMPTS) * 3
    r = rollouts
    assert r.input_ids.shape == r.attention_mask.shape == r.response_mask.shape == r.sample_logprobs.shape
    assert r.input_ids.shape[0] == b and r.ended_with_eos.shape == (b,)
    assert r.prompt_index.tolist() == [i for i in range(len(PROMPTS)) for _ in range(3)]
    for row in range(b):
        prompt = PROMPTS[row // 3]
        assert r.input_ids[row, : len(prompt)].tolist() == prompt  # right padded: the prompt first
        assert int(r.prompt_lengths[row]) == len(prompt)
        n_resp = int(r.response_mask[row].sum())
        assert 1 <= n_resp <= 8
        # the response follows the prompt, then padding; attention covers prompt + response
        assert r.response_mask[row, len(prompt) : len(prompt) + n_resp].all()
        assert int(r.attention_mask[row].sum()) == len(prompt) + n_resp
        assert not r.response_mask[row, : len(prompt)].any()
        assert (r.input_ids[row][r.attention_mask[row] == 0] == PAD).all()
        # 0.0 off the response
        assert (r.sample_logprobs[row][~r.response_mask[row]] == 0).all()


def test_eos_flags_and_responses(rollouts):
    r = rollouts
    flags = r.ended_with_eos.tolist()
    assert any(flags) and not all(flags)  # the EOS bias makes both cases occur at this seed
    for row, ids in enumerate(r.responses(include_eos=True)):
        assert (ids[-1] == EOS) == flags[row]
        assert EOS not in ids[:-1]  # a row stops at its first EOS
        if not flags[row]:
            assert len(ids) == 8  # cut at max_new_tokens
    assert [len(x) for x in r.responses()] == [
        len(x) - f for x, f in zip(r.responses(include_eos=True), flags, strict=True)
    ]


def test_kv_cache_logprobs_equal_recompute(rollouts):
    model = model_with_eos()
    recomputed = frozen_logprobs(model, rollouts.batch())
    torch.testing.assert_close(recomputed, rollouts.sample_logprobs, atol=1e-5, rtol=0)
    with_grad = response_logprobs(model, rollouts.batch())
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), recomputed)


def test_logprobs_chunked_and_seeded():
    model = model_with_eos()
    a = sample_rollouts(model, PROMPTS, sampling(), n=2, seed=5)
    b = sample_rollouts(model, PROMPTS, sampling(), n=2, seed=5)
    assert torch.equal(a.input_ids, b.input_ids)
    chunked = sample_rollouts(model, PROMPTS, sampling(), n=2, seed=5, batch_size=3)
    recomputed = frozen_logprobs(model, chunked.batch())
    torch.testing.assert_close(recomputed, chunked.sample_logprobs, atol=1e-5, rtol=0)


def test_greedy_rows_of_one_prompt_agree():
    r = sample_rollouts(model_with_eos(), PROMPTS, GenerationConfig(max_new_tokens=5), n=2)
    assert torch.equal(r.input_ids[0::2], r.input_ids[1::2])


def test_token_logprobs_by_hand():
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    out = token_logprobs(logits, ids)
    assert out.shape == (2, 4) and (out[:, 0] == 0).all()
    expected = torch.log_softmax(logits[1, 2], -1)[ids[1, 3]]
    torch.testing.assert_close(out[1, 3], expected)


def test_prompt_longer_than_the_context():
    model = model_with_eos()  # max_positions 32
    with pytest.raises(DataError, match="prompt 1 has 30 tokens"):
        sample_rollouts(model, [[5], [5] * 30], sampling())
    with pytest.raises(DataError, match="prompt 0 is empty"):
        sample_rollouts(model, [[]], sampling())


def test_rollouts_after_a_fused_optimizer_step_use_the_new_weights():
    """torch's fused AdamW changes the weights without bumping their version; the engine's mark_updated
    (called after every step) does: the decode-time weights must not be the ones prepared before the step."""
    from plmkit.train.loop import mark_updated

    model = model_with_eos()
    sample_rollouts(model, PROMPTS, sampling(), seed=0)  # prepares the decode-time weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model(torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    optimizer.step()
    mark_updated(optimizer)
    after = sample_rollouts(model, PROMPTS, sampling(), seed=0)
    torch.testing.assert_close(
        frozen_logprobs(model, after.batch()), after.sample_logprobs, atol=1e-5, rtol=0
    )
