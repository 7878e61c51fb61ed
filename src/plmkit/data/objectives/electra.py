"""ELECTRA's collator (Clark et al. 2020): MLM masking as ELECTRA does it (15% of the text tokens
selected, 85% of those replaced by [MASK], the rest left unchanged; no random tokens); labels at the
selected positions. Its batches are what `plmkit.model.electra.ElectraPretrainer` consumes.

    batch = ElectraObjective(tokenizer)(examples)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from plmkit.data.objectives.mlm import MLMObjective


@dataclass(eq=False)
class ElectraObjective(MLMObjective):
    """MLM masking with ELECTRA's proportions (85% [MASK], 15% unchanged)."""

    name: ClassVar[str] = "electra"
    family: ClassVar[str] = "masked"

    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.85
    random_replace_prob: float = 0.0
