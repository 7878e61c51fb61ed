"""plmkit.model: one Transformer for the four families (see transformer.py for the map)."""

from __future__ import annotations

from typing import Any

from plmkit.model.config import ModelConfig
from plmkit.model.heads import (
    RewardModel,
    SequenceClassifier,
    SpanQA,
    TokenClassifier,
    TransformerModel,
    ValueHead,
)
from plmkit.model.losses import pairwise_ranking_loss, sequence_logprobs, token_loss
from plmkit.model.presets import PRESETS, get_preset
from plmkit.model.registry import FAMILY_MODELS, MODEL_CLASSES
from plmkit.model.transformer import (
    CausalLM,
    MaskedLM,
    ModelOutput,
    PrefixLM,
    PretrainedModel,
    Seq2SeqLM,
    reorder_cache,
)


def build_model(spec: str | ModelConfig, **overrides: Any) -> PretrainedModel:
    """The family language model for a preset name or a ModelConfig, with field overrides.

    >>> build_model("gpt2-small")                       # CausalLM, 124,439,808 parameters
    >>> build_model("gpt2-tiny", vocab_size=4096)       # a preset with a smaller vocabulary
    """
    config = get_preset(spec) if isinstance(spec, str) else spec
    if overrides:
        config = config.replace(**overrides)
    return FAMILY_MODELS[config.family](config)


__all__ = [
    "FAMILY_MODELS",
    "MODEL_CLASSES",
    "PRESETS",
    "CausalLM",
    "MaskedLM",
    "ModelConfig",
    "ModelOutput",
    "PrefixLM",
    "PretrainedModel",
    "RewardModel",
    "Seq2SeqLM",
    "SequenceClassifier",
    "SpanQA",
    "TokenClassifier",
    "TransformerModel",
    "ValueHead",
    "build_model",
    "get_preset",
    "pairwise_ranking_loss",
    "sequence_logprobs",
    "token_loss",
    "reorder_cache",
]
