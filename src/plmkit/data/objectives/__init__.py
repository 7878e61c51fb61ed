"""Pre-training objectives, one small module each (DESIGN.md principle 2: objectives are data).

    objective = build_objective("mlm", tokenizer, mlm_probability=0.15, seed=0)
    batch = objective([ids_1, ids_2, ...])      # dict: input_ids, attention_mask, labels (-100: no loss)
    loss = model(**batch).loss
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from plmkit.data.objectives.base import Objective
from plmkit.errors import ConfigError, did_you_mean

# name -> "module:Class"; imported on first use so optional dependencies (jieba, pypinyin) load lazily
OBJECTIVES: dict[str, str] = {
    "clm": "plmkit.data.objectives.clm:CLMObjective",
    "mlm": "plmkit.data.objectives.mlm:MLMObjective",
    "wwm": "plmkit.data.objectives.wwm:WholeWordMaskObjective",
    "spell": "plmkit.data.objectives.spell:SpellingCorrectionObjective",
    "span": "plmkit.data.objectives.span:SpanMaskObjective",
    "prefix_lm": "plmkit.data.objectives.prefix:PrefixLMObjective",
    "unilm": "plmkit.data.objectives.unilm:UniLMObjective",
    "glm": "plmkit.data.objectives.glm:GLMObjective",
    "t5_span": "plmkit.data.objectives.t5_span:SpanCorruptionObjective",
    "bart": "plmkit.data.objectives.bart:BartDenoisingObjective",
    "electra": "plmkit.data.objectives.electra:ElectraObjective",
}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective {name!r}{did_you_mean(name, OBJECTIVES)}; available: {', '.join(OBJECTIVES)}"
        )
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_objective(name: str, tokenizer: Any, **options: Any) -> Objective:
    """The named objective with its options (unknown options fail with a suggestion)."""
    cls = objective_class(name)
    if dataclasses.is_dataclass(cls):
        allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} for objective {name!r}{did_you_mean(key, allowed)}")
    return cls(tokenizer=tokenizer, **options)


__all__ = ["OBJECTIVES", "Objective", "build_objective", "objective_class"]
