"""Merging LoRA into a quantized base (QLoRA): dequantize -> W + s·BA -> quantize again.

The merged weight is rounded to the base's int8 / NF4 grid once more, so the merged model does not compute
exactly what the LoRA model computed. `merge` therefore measures the change on a probe batch (the logits
of the model with LoRA unmerged vs merged) and reports it as a MergeReport (a warning, and
`model.merge_report`); with `max_logits_error` it refuses instead, leaving the model exactly as it was.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError


@dataclass
class MergeReport:
    mode: str  # the base's quantization
    layers: int  # LoRA layers merged
    max_logits_error: float  # max |logits merged - logits of the unmerged LoRA model| on the probe
    max_logits: float  # max |logits| on the probe, for scale
    probe_shape: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"merged LoRA into the {self.mode} base ({self.layers} layers) by dequantize -> merge -> "
            f"requantize: max |logits change| {self.max_logits_error:.4g} on a "
            f"{'x'.join(map(str, self.probe_shape))} probe batch (logits up to {self.max_logits:.3g})"
        )


def probe_batch(model: nn.Module, batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids (B, T) on the model's device: the same probe every time."""
    config = model.config
    length = min(length, config.max_positions)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids.to(next(model.parameters()).device)


@torch.no_grad()
def probe_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        if getattr(model.config, "family", None) == "seq2seq":
            out = model(input_ids=ids, decoder_input_ids=ids)
        else:
            out = model(input_ids=ids)
    finally:
        model.train(was_training)
    return (out.logits if out.logits is not None else out.hidden_states).float()


def merge_quantized(
    model: nn.Module,
    base: nn.Module,
    modules: list,
    mode: str,
    probe: torch.Tensor | None = None,
    max_logits_error: float | None = None,
) -> MergeReport:
    """Merge every LoRA module of a quantized `base` (inside `model`), measuring the logits change."""
    probe = probe_batch(base) if probe is None else probe
    before = probe_logits(model, probe)
    saved = [
        (m, m.weight.detach().clone(), getattr(m, m.quant.scale_name).detach().clone())
        for m in modules
        if not m.merged
    ]
    for module, _, _ in saved:
        module.merge()
    after = probe_logits(model, probe)
    error = float((after - before).abs().max())
    if max_logits_error is not None and error > max_logits_error:
        with torch.no_grad():  # put the base back exactly: the merge never happened
            for module, weight, scale in saved:
                module.weight.copy_(weight)
                getattr(module, module.quant.scale_name).copy_(scale)
                module.merged = False
        raise ConfigError(
            f"merging LoRA into the {mode} base would change the logits by up to {error:.4g} on a "
            f"probe batch (limit max_logits_error={max_logits_error}); the model is left unmerged: "
            "keep the adapter separate, or merge it into the float base model"
        )
    report = MergeReport(mode, len(saved), error, float(before.abs().max()), tuple(probe.shape))
    warnings.warn(str(report))
    return report
