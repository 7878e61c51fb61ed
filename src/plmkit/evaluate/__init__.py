"""plmkit.evaluate: the streaming loss evaluator, perplexity and (later) task metrics.

The names load lazily (PEP 562): `plm eval --help` and its option ranges (options.py) import no torch.
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "evaluate_loss": "plmkit.evaluate.perplexity",
    "loss_metrics": "plmkit.evaluate.loss",
    "model_token_loss": "plmkit.evaluate.loss",
    "stream_loss": "plmkit.evaluate.loss",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
