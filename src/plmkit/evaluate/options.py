"""The ranges of evaluate_loss's numbers, shared with `plm eval`'s options (plmkit.cli.inference): one
wording for `--batch-size 0` and `evaluate_loss(..., batch_size=0)`. Imports no torch."""

from __future__ import annotations

from plmkit.config.fields import Range

BLOCK_SIZE = Range(ge=1, off="null", means="the model's max_positions, at most 512")
BATCH_SIZE = Range(ge=1)
MAX_BATCHES = Range(ge=1, off="null", means="every batch")
SEED = Range(ge=0)
