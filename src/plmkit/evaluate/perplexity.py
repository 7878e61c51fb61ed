"""Held-out loss and perplexity of a checkpoint on a text source: `plm eval CKPT --data FILE`.

Streams: each batch's summed loss is added up and its logits are dropped, so memory stays flat
however large the file is. The source is read like a recipe's `data.sources` entry (format,
text_field, blank_line_documents, on_error) and tokenized into the same cached token store.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import torch

from plmkit.errors import DataError
from plmkit.evaluate.loss import stream_loss
from plmkit.evaluate.options import BATCH_SIZE, BLOCK_SIZE, MAX_BATCHES, SEED

DEFAULT_OBJECTIVE = {"causal": "clm", "masked": "mlm", "prefix": "prefix_lm", "seq2seq": "t5_span"}


def evaluate_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    data: str | Any,
    objective: str | None = None,
    block_size: Annotated[int, BLOCK_SIZE] | None = None,
    batch_size: Annotated[int, BATCH_SIZE] = 8,
    max_batches: Annotated[int, MAX_BATCHES] | None = None,
    seed: Annotated[int, SEED] = 0,
    text_field: str = "text",
    cache_dir: str | Path | None = None,
) -> dict[str, float]:
    """Mean loss per target token and its perplexity over the packed blocks of `data` (a path, or a
    SourceSpec for its format / text_field / blank_line_documents / on_error)."""
    from plmkit.data import SourceSpec, packed_blocks
    from plmkit.data.objectives import build_objective
    from plmkit.errors import ConfigError

    for name, value, declared in (
        ("block_size", block_size, BLOCK_SIZE),
        ("batch_size", batch_size, BATCH_SIZE),
        ("max_batches", max_batches, MAX_BATCHES),
        ("seed", seed, SEED),
    ):
        if value is not None:
            declared.check(value, name)  # checked before the data is tokenized into the cache
    if tokenizer is None:
        raise ConfigError("the checkpoint has no tokenizer; evaluation needs one to read text")
    family = model.config.family
    objective = objective or DEFAULT_OBJECTIVE[family]
    collate = build_objective(objective, tokenizer, seed=seed)
    block_size = block_size or min(model.config.max_positions, 512)
    spec = data if isinstance(data, SourceSpec) else SourceSpec(path=str(data), text_field=text_field)
    try:
        blocks = packed_blocks(spec, tokenizer, block_size, cache_dir)
    except OSError as exc:  # e.g. a cache folder whose name is too long, or not writable
        where = exc.filename or spec.path
        raise DataError(f"{where}: {exc.strerror or exc}; check --cache-dir and --data") from None
    starts = range(0, len(blocks), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    batches = (collate([blocks[i] for i in range(s, min(s + batch_size, len(blocks)))]) for s in starts)
    total, targets = stream_loss(model, batches, device=next(model.parameters()).device)
    if targets == 0:  # a loss of 0 and a perplexity of 1.0 would be a wrong number, not a result
        raise DataError(
            f"{spec.path}: nothing to evaluate: {len(blocks)} block(s) of {block_size} tokens and no "
            f"target tokens; give more text or a smaller block size"
        )
    mean = total / targets
    return {
        "loss": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "tokens": targets,
        "blocks": min(len(blocks), len(starts) * batch_size),
    }
