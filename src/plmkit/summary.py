"""What a preset or a checkpoint is: family, sizes and exact parameter count (the library behind `plm info`).

    summary = summarize("gpt2-small")           # a preset: built on the meta device, no memory for weights
    summary = summarize("runs/demo/checkpoints/step-00000600")
    summary.n_parameters                        # 124,439,808 for GPT-2 small (tied weights counted once)

The io layer: a checkpoint is read with plmkit.load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError, did_you_mean

# Shown first, in this order, when the model's config has them.
ARCHITECTURE_KEYS = ("family", "vocab_size", "d_model", "n_layer", "n_head", "max_positions")


@dataclass
class ModelSummary:
    target: str  # the preset name or checkpoint folder asked about
    source: str  # "preset" | "checkpoint"
    architecture: dict[str, Any] = field(default_factory=dict)  # ARCHITECTURE_KEYS the config has
    n_parameters: int = 0  # tied weights counted once
    peft: str | None = None  # "lora; trainable ..." for a PEFT run's checkpoint
    quantization: str | None = None  # plmkit.quant.report for a quantized checkpoint


def summarize(target: str) -> ModelSummary:
    """The summary of a preset name (e.g. gpt2) or a checkpoint folder (plmkit or Hugging Face)."""
    import torch

    from plmkit.model import build_model
    from plmkit.model.presets import PRESETS

    if target in PRESETS:
        source = "preset"
        try:  # no memory for the weights: a 7B preset is counted as fast as a tiny one
            with torch.device("meta"):
                model = build_model(target)
        except Exception:  # an init that needs real values: build it for real
            model = build_model(target)
    elif Path(target).is_dir():
        from plmkit.io import load

        source = "checkpoint"
        model, _ = load(target)
    else:
        raise ConfigError(
            f'"{target}" is neither a preset name nor a checkpoint directory{did_you_mean(target, PRESETS)}'
        )
    config = model.config
    summary = ModelSummary(
        target, source, {key: getattr(config, key) for key in ARCHITECTURE_KEYS if hasattr(config, key)}
    )
    summary.n_parameters = sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once
    peft = getattr(model, "peft_config", None)
    if peft is not None:
        from plmkit.peft import trainable_report

        summary.peft = f"{peft.method}; {trainable_report(model)}"
    if getattr(model, "quant_config", None) is not None:
        from plmkit.quant import report

        summary.quantization = str(report(model))
    return summary
