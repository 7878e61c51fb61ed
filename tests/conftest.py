"""Shared test settings."""

import torch

# Tiny models run fastest on one thread; with several test processes (or helpers) on a 2-core machine,
# torch's default thread pool makes them many times slower through contention.
torch.set_num_threads(1)
