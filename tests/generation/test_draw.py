"""Sampling's draw (inverse CDF): the distribution of torch.multinomial(probs, 1), tokens of probability 0
never drawn, reproducible with a generator."""

from __future__ import annotations

import torch

from plmkit.generation.sampling import draw


def test_frequencies_follow_the_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    g = torch.Generator().manual_seed(0)
    n = 40_000
    tokens = draw(probs.repeat(n, 1), g).view(n, 3)  # n draws of each row
    for row in range(3):
        freq = torch.bincount(tokens[:, row], minlength=4).float() / n
        assert torch.allclose(freq, probs[row], atol=0.01), (row, freq)
        assert (freq[probs[row] == 0] == 0).all()  # never a removed token


def test_reproducible_with_a_generator():
    probs = torch.randn(5, 50).softmax(-1)
    a = draw(probs, torch.Generator().manual_seed(3))
    b = draw(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5,) and a.dtype == torch.long
