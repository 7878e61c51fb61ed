"""plmkit: pre-train, fine-tune and align Transformer language models of all four families.

Public API (see DESIGN.md): everything listed in `_EXPORTS` is importable from `plmkit` directly,
e.g. `from plmkit import build_model`. Names are loaded lazily on first use (PEP 562) so that
`import plmkit` (and therefore `plm --help`) stays fast and does not import torch.

To export a name, add one line `"name": "plmkit.module",` to `_EXPORTS`.
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports

__version__ = "0.1.0"

# subpackages reachable as attributes (`plmkit.peft.apply(...)`), then name -> module that defines it
_MODULES = ("align", "generation", "peft", "quant")
_EXPORTS: dict[str, str] = {
    "PlmkitError": "plmkit.errors",
    "ConfigError": "plmkit.errors",
    "ShapeError": "plmkit.errors",
    "DataError": "plmkit.errors",
    "CheckpointError": "plmkit.errors",
    "ModelConfig": "plmkit.model",
    "build_model": "plmkit.model",
    "ModelOutput": "plmkit.model",
    "CausalLM": "plmkit.model",
    "MaskedLM": "plmkit.model",
    "PrefixLM": "plmkit.model",
    "Seq2SeqLM": "plmkit.model",
    "TransformerModel": "plmkit.model",
    "SequenceClassifier": "plmkit.model",
    "TokenClassifier": "plmkit.model",
    "SpanQA": "plmkit.model",
    "RewardModel": "plmkit.model",
    "get_preset": "plmkit.model",
    "PRESETS": "plmkit.model",
    "load_hf": "plmkit.model.hf",
    "save_hf": "plmkit.model.hf",
    "Tokenizer": "plmkit.tokenizer",
    "save": "plmkit.io",
    "load": "plmkit.io",
    "generate": "plmkit.generation",
    "stream": "plmkit.generation",
    "generate_ids": "plmkit.generation",
    "GenerationConfig": "plmkit.generation",
    "GenerationOutput": "plmkit.generation",
}

__all__ = ["__version__", *_MODULES, *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _MODULES)
