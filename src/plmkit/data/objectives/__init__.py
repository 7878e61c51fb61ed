"""Pre-training objectives, one small module each (DESIGN.md principle 2: objectives are data).

objective = build_objective("mlm", tokenizer, mlm_probability=0.15, seed=0)
batch = objective([ids_1, ids_2, ...])      # dict: input_ids, attention_mask, labels (-100: no loss)
loss = model(**batch).loss
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plmkit.config import check_fields
from plmkit.errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # the names below stay importable without torch (a recipe is checked before torch loads)
    from plmkit.data.objectives.base import Objective

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
    """The named objective with its options (and `seed`), checked against its fields like every config:
    an unknown option fails with the closest valid one, a value outside its range names the range."""
    cls = objective_class(name)
    return cls(tokenizer=tokenizer, **check_fields(cls, options, exclude=("tokenizer",)))


__all__ = ["OBJECTIVES", "build_objective", "objective_class"]
