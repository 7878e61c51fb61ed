"""plmkit.evaluate: perplexity and (later) task metrics."""

from plmkit.evaluate.perplexity import evaluate_loss

__all__ = ["evaluate_loss"]
