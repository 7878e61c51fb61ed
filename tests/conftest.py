"""Shared test settings and fixtures (the plain helpers they use live in tests/tiny.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tiny

# Tiny models run fastest on one thread; with several test processes (or helpers) on a 2-core machine,
# torch's default thread pool makes them many times slower through contention.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    """Factory: `tiny_model("masked", seed=1, n_layer=1)` -> a seeded tiny model in eval mode."""
    return tiny.tiny_model


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip with the reason where a user's clone does not have it."""
    if not tiny.SHARED_DATA.is_dir():
        pytest.skip(f"{tiny.SHARED_DATA} is absent (it is present in CI)")
    return tiny.SHARED_DATA
