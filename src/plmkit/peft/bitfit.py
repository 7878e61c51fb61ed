"""BitFit (Ben Zaken et al. 2021): train only the bias terms (attention, MLP, norms, LM head bias).

Nothing is added to the model, so outputs at initialisation are the base model's by construction;
`plmkit.peft.base.peft_parameter_names` selects every parameter named `bias`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from plmkit.errors import ConfigError


@dataclass
class BitFitOptions:
    """BitFit takes no options of its own (only train_head, which every method takes)."""


def check_bitfit(model: nn.Module, train_head: bool) -> None:
    """A model without biases (LLaMA, T5) has nothing for BitFit to train."""
    has_bias = any(name.rsplit(".", 1)[-1] == "bias" for name, _ in model.named_parameters())
    if not has_bias and not train_head:
        raise ConfigError(
            f"bitfit: {type(model).__name__} ({model.config.family}) has no bias terms to "
            "train (e.g. LLaMA/T5 use none); use method=lora or adapter instead"
        )
