"""generate_ids(..., return_logprobs=True): the log-probs of the generated tokens, checked against a
recompute from one plain forward pass of prompt + generated tokens."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.generation import GenerationOutput, generate_ids
from plmkit.model.dropout import dropout_off
from tiny import tiny_model

SMALL = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64, initializer_range=0.3)


tiny = partial(tiny_model, **SMALL)  # tiny(family, seed=0, **overrides)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def recomputed_logits(model, prompt: list[int], new: list[int]) -> torch.Tensor:
    """(N, V) next-token logits at each generated token, from one forward pass without a cache."""
    with torch.no_grad(), dropout_off():
        if model.config.family == "seq2seq":
            start = [model.config.decoder_start_id]
            return model(
                input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([start + new])
            ).logits[0, :-1]
        logits = model(torch.tensor([prompt + new])).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(new)]


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_greedy_logprobs_equal_a_plain_forward(family):
    model = tiny(family, eos_token_id=7)
    prompts = [[5, 17, 3, 40, 22], [9, 1, 33]]
    ids, mask = left_pad(prompts)
    if family == "seq2seq":
        ids, mask = ids.flip(1), mask.flip(1)  # the encoder takes right padding
        prompts = [list(reversed(p)) for p in prompts]
    out = generate_ids(model, ids, mask, max_new_tokens=10, return_logprobs=True, top_logprobs=3)
    assert isinstance(out, GenerationOutput)
    assert out.ids.tolist() == generate_ids(model, ids, mask, max_new_tokens=10).tolist()
    assert out.logprobs.shape == out.mask.shape == out.ids.shape and out.top_ids.shape == (*out.ids.shape, 3)
    for row, prompt in enumerate(prompts):
        n = int(out.mask[row].sum())
        new = out.ids[row, :n].tolist()
        if family == "seq2seq":
            prompt = [t for t, m in zip(prompt, mask[row].tolist()) if m]
        expected = recomputed_logits(model, prompt, new).log_softmax(-1)
        chosen = expected.gather(1, torch.tensor(new)[:, None]).squeeze(1)
        torch.testing.assert_close(out.logprobs[row, :n], chosen, atol=1e-5, rtol=0)
        assert torch.all(out.logprobs[row, n:] == 0)
        top = expected.topk(3, dim=-1)
        torch.testing.assert_close(out.top_logprobs[row, :n], top.values, atol=1e-5, rtol=0)
        assert out.top_ids[row, :n].tolist() == top.indices.tolist()
        assert out.top_ids[row, :n, 0].tolist() == new  # greedy picks the most likely token


def test_sampling_logprobs_model_and_processed():
    model = tiny(initializer_range=0.05).train()  # training mode: generation still runs without dropout
    prompt = [5, 17, 3]
    options = dict(max_new_tokens=12, do_sample=True, seed=3, temperature=0.7, top_k=10, eos_token_id=[])
    raw = generate_ids(model, torch.tensor([prompt]), return_logprobs=True, **options)
    processed = generate_ids(
        model, torch.tensor([prompt]), return_logprobs=True, logprobs_of="processed", **options
    )
    assert raw.ids.tolist() == processed.ids.tolist() and bool(raw.mask.all())
    new = raw.ids[0].tolist()
    logits = recomputed_logits(model, prompt, new)
    index = torch.tensor(new)[:, None]
    # "model": temperature 1, no filter: exactly what a forward pass gives
    torch.testing.assert_close(
        raw.logprobs[0], logits.log_softmax(-1).gather(1, index).squeeze(1), atol=1e-5, rtol=0
    )
    # "processed": the distribution the tokens were drawn from (temperature, then the top 10 only)
    scores = logits / 0.7
    kth = scores.topk(10, dim=-1).values[:, -1:]
    scores = scores.masked_fill(scores < kth, float("-inf"))
    torch.testing.assert_close(
        processed.logprobs[0], scores.log_softmax(-1).gather(1, index).squeeze(1), atol=1e-5, rtol=0
    )
    assert bool((processed.logprobs[0] > raw.logprobs[0]).all())  # mass moved onto the kept tokens


def test_logprob_options_are_checked():
    model = tiny()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ConfigError, match="beam search"):
        generate_ids(model, ids, num_beams=2, return_logprobs=True)
    with pytest.raises(ConfigError, match="needs return_logprobs"):
        generate_ids(model, ids, top_logprobs=2)
    with pytest.raises(ConfigError, match='did you mean "processed"'):
        generate_ids(model, ids, return_logprobs=True, logprobs_of="procesed")
    out = generate_ids(model, ids, max_new_tokens=3, return_logprobs=True)
    assert out.top_ids is None and not out.ids.is_inference() and not out.logprobs.is_inference()
