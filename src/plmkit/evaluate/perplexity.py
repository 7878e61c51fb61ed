"""Held-out loss and perplexity of a checkpoint on a text file: `plm eval CKPT --data FILE`.

Streams: each batch's summed loss is added up and its logits are dropped, so memory stays flat
however large the file is.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.evaluate.loss import stream_loss

DEFAULT_OBJECTIVE = {"causal": "clm", "masked": "mlm", "prefix": "prefix_lm", "seq2seq": "t5_span"}


def evaluate_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    data: str,
    objective: str | None = None,
    block_size: int | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    seed: int = 0,
    text_field: str = "text",
) -> dict[str, float]:
    """Mean loss per target token and its perplexity over the packed blocks of `data`."""
    from plmkit.data import SourceSpec, packed_blocks
    from plmkit.data.objectives import build_objective

    if tokenizer is None:
        raise ConfigError("the checkpoint has no tokenizer; evaluation needs one to read text")
    family = model.config.family
    objective = objective or DEFAULT_OBJECTIVE[family]
    collate = build_objective(objective, tokenizer, seed=seed)
    block_size = block_size or min(model.config.max_positions, 512)
    blocks = packed_blocks(SourceSpec(path=data, text_field=text_field), tokenizer, block_size)
    starts = range(0, len(blocks), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    batches = (collate([blocks[i] for i in range(s, min(s + batch_size, len(blocks)))]) for s in starts)
    total, targets = stream_loss(model, batches, device=next(model.parameters()).device)
    mean = total / max(targets, 1)
    return {
        "loss": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "tokens": targets,
        "blocks": min(len(blocks), len(starts) * batch_size),
    }
