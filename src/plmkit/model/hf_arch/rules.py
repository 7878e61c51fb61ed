"""The vocabulary of the Hugging Face name tables: a Rule maps one of our tensors to theirs, an
Architecture bundles one model type's config and weight translations (see plmkit.model.hf_arch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plmkit.errors import CheckpointError
from plmkit.model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False  # GPT-2 Conv1D: (in, out) on disk
    row: bool = False  # a vector stored as a (1, N) row (BART's final_logits_bias)


@dataclass(frozen=True)
class DropoutFields:
    """Where a config.json keeps its dropout rates, with transformers' defaults for an absent key. They
    change training only, and fine-tuning an imported checkpoint uses them, as transformers does."""

    hidden: tuple[str, ...] = ()  # -> ModelConfig.dropout: the first key is read, every key written
    attention: str | None = None  # -> ModelConfig.attention_dropout
    hidden_default: float = 0.0
    attention_default: float = 0.0

    def read(self, hf: dict[str, Any]) -> dict[str, float]:
        def rate(key: str, default: float) -> float:
            value = hf.get(key)
            return default if value is None else float(value)  # absent or null: transformers' default

        out = {}
        if self.hidden:
            out["dropout"] = rate(self.hidden[0], self.hidden_default)
        if self.attention:
            out["attention_dropout"] = rate(self.attention, self.attention_default)
        return out

    def write(self, c: ModelConfig) -> dict[str, float]:
        out = {self.attention: c.attention_dropout} if self.attention else {}
        return out | {key: c.dropout for key in self.hidden}  # T5: one key for both, the hidden rate


@dataclass(frozen=True)
class Architecture:
    model_type: str
    to_config: Callable[[dict[str, Any]], ModelConfig]
    from_config: Callable[[ModelConfig], dict[str, Any]]
    weights: Callable[[ModelConfig, bool], list[Rule]]  # (config, with LM head) -> rules
    lm_class: str  # transformers class name of the LM architecture (for export)
    base_class: str  # transformers class name of the bare model
    dropout: DropoutFields = DropoutFields()


def rule_list(prefix: str, pairs: list[tuple[str, str | tuple[str, ...]]], transpose: tuple[str, ...] = ()):
    out = []
    for ours, theirs in pairs:
        names = (theirs,) if isinstance(theirs, str) else theirs
        out.append(
            Rule(prefix + ours, names, transpose=ours.endswith(".weight") and ours.startswith(transpose))
        )
    return out


def linear_pairs(
    ours: str, theirs: str | tuple[str, ...], bias: bool
) -> list[tuple[str, str | tuple[str, ...]]]:
    """weight (and bias) pairs of one linear layer, possibly fused from several HF layers."""
    names = (theirs,) if isinstance(theirs, str) else theirs
    pairs: list[tuple[str, str | tuple[str, ...]]] = [(f"{ours}.weight", tuple(f"{n}.weight" for n in names))]
    if bias:
        pairs.append((f"{ours}.bias", tuple(f"{n}.bias" for n in names)))
    return pairs


def norm_pairs(ours: str, theirs: str, bias: bool = True) -> list[tuple[str, str | tuple[str, ...]]]:
    return [(f"{ours}.weight", f"{theirs}.weight")] + ([(f"{ours}.bias", f"{theirs}.bias")] if bias else [])


def activation_from_hf(name: str) -> str:
    table = {
        "gelu": "gelu",
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "relu": "relu",
        "silu": "silu",
        "swish": "silu",
    }
    if name not in table:
        raise CheckpointError(f"activation {name!r} is not supported; plmkit maps {', '.join(table)}")
    return table[name]


ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def shared_hf_fields(c: ModelConfig) -> dict[str, Any]:
    """The config.json fields every exported architecture writes the same way."""
    return dict(
        vocab_size=c.vocab_size,
        tie_word_embeddings=c.tie_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
    )
