"""plmkit.evaluate: the streaming loss evaluator, perplexity and (later) task metrics."""

from plmkit.evaluate.loss import loss_metrics, model_token_loss, stream_loss
from plmkit.evaluate.perplexity import evaluate_loss

__all__ = ["evaluate_loss", "loss_metrics", "model_token_loss", "stream_loss"]
