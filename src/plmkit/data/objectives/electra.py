"""ELECTRA's collator (Clark et al. 2020): MLM masking as ELECTRA does it (15% of the text tokens
selected, 85% of those replaced by [MASK], the rest left unchanged; no random tokens); labels at the
selected positions. Its batches are what `plmkit.model.electra.ElectraPretrainer` consumes, and the
objective builds that model (`build_model`), so a recipe with `objective: {name: electra}` trains it.

    batch = ElectraObjective(tokenizer)(examples)
    model = ElectraObjective.build_model(model_config, generator_layers=2)   # options: ElectraModelOptions
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch

from plmkit.config.fields import Range
from plmkit.data.objectives.base import Probability, Rate
from plmkit.data.objectives.mlm import MLMObjective
from plmkit.model.config import ModelConfig


@dataclass
class ElectraModelOptions:
    """A recipe's `objective.options.model` for ELECTRA (plmkit.model.electra.build_electra's options)."""

    generator_layers: (
        Annotated[int, Range(ge=1, off="null", means="half the discriminator's layers")] | None
    ) = None
    generator_heads: Annotated[int, Range(ge=1, off="null", means="a quarter of its heads")] | None = None
    generator_d_ff: Annotated[int, Range(ge=1, off="null", means="a quarter of its MLP width")] | None = None
    disc_weight: Annotated[float, Range(gt=0)] = (
        50.0  # weight of the discriminator's loss (the paper's lambda)
    )
    temperature: Annotated[float, Range(gt=0)] = 1.0  # of the generator's sampling
    seed: Annotated[int, Range(ge=0)] = 0  # seeds the replacement sampling


@dataclass(eq=False)
class ElectraObjective(MLMObjective):
    """MLM masking with ELECTRA's proportions (85% [MASK], 15% unchanged)."""

    name: ClassVar[str] = "electra"
    family: ClassVar[str] = "masked"
    model_options: ClassVar[type | None] = ElectraModelOptions

    mlm_probability: Rate = 0.15
    mask_replace_prob: Probability = 0.85
    random_replace_prob: Probability = 0.0

    @classmethod
    def build_model(cls, config: ModelConfig, **model_options: Any) -> torch.nn.Module:
        """ELECTRA's generator + discriminator (the discriminator from `config`)."""
        from plmkit.model.electra import build_electra

        return build_electra(config, **model_options)
