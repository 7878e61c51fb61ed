"""plmkit.model: one Transformer for the four families (stack.py: the shared body; transformer.py: the families).

The names below load lazily (PEP 562), so that reading a recipe's model section (model.config) imports no
torch: a bad recipe fails fast.
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ModelConfig": "plmkit.model.config",
    "SpellingCorrector": "plmkit.model.csc",
    "StaticCache": "plmkit.model.kv_cache",
    "RewardModel": "plmkit.model.heads",
    "SequenceClassifier": "plmkit.model.heads",
    "SpanQA": "plmkit.model.heads",
    "TokenClassifier": "plmkit.model.heads",
    "TransformerModel": "plmkit.model.heads",
    "ValueHead": "plmkit.model.heads",
    "pairwise_ranking_loss": "plmkit.model.losses",
    "sequence_logprobs": "plmkit.model.losses",
    "token_loss": "plmkit.model.losses",
    "PRESETS": "plmkit.model.presets",
    "get_preset": "plmkit.model.presets",
    "ModelOutput": "plmkit.model.pretrained",
    "PretrainedModel": "plmkit.model.pretrained",
    "FAMILY_MODELS": "plmkit.model.registry",
    "MODEL_CLASSES": "plmkit.model.registry",
    "build_model": "plmkit.model.registry",
    "reorder_cache": "plmkit.model.stack",
    "CausalLM": "plmkit.model.transformer",
    "MaskedLM": "plmkit.model.transformer",
    "PrefixLM": "plmkit.model.transformer",
    "Seq2SeqLM": "plmkit.model.transformer",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
