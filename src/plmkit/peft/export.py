"""Export a LoRA adapter in the peft library's format, for the Hugging Face export of its base.

    save_hf(model, tok, "hf-base")                    # or: export_peft(model, "adapter", base_directory="hf-base")
    export_peft(model, "adapter")                     # adapter_config.json + adapter_model.safetensors
    # transformers + peft:  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("hf-base"), "adapter")

Names come from the same rule tables as the weight export (plmkit.model.hf_arch): our
`transformer.blocks.0.attn.qkv` is GPT-2's `transformer.h.0.attn.c_attn` and LLaMA's
`model.layers.0.self_attn.{q,k,v}_proj`; the keys are peft's `base_model.model.<module>.lora_A.weight`
(r, in) and `.lora_B.weight` (out, r), the same layout for GPT-2's Conv1D (`fan_in_fan_out: true`).

Fused modules map exactly (see lora.py):
  * where Hugging Face splits our fused Linear (LLaMA q/k/v, gate/up; BART k/v), each of its modules
    gets the rows of our update it owns: lora_A = A, lora_B = B[rows] (for a LoRA on the whole fused
    module) or the part's own A_p, B_p (for `attn.q`-style part targets);
  * where Hugging Face fuses what we update in parts (GPT-2's c_attn with `attn.q,attn.v`), one LoRA
    of rank r·parts carries them side by side: A' = [A_q; A_v], B' = [[B_q, 0], [0, 0], [0, B_v]], so
    B'A' = [B_q A_q; 0; B_v A_v]. Its rank and alpha go to peft's rank_pattern / alpha_pattern so
    that alpha'/r' (or alpha'/sqrt(r') with rsLoRA) is our scaling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from plmkit.errors import ConfigError
from plmkit.model.heads import TransformerModel
from plmkit.model.hf import BODY_PREFIXES, _hf_architecture_for, _split, save_hf
from plmkit.model.pretrained import PretrainedModel
from plmkit.peft.base import require_config
from plmkit.peft.lora import LoRALinear, lora_modules

TASK_TYPES = {"CausalLM": "CAUSAL_LM", "Seq2SeqLM": "SEQ_2_SEQ_LM", "TransformerModel": "FEATURE_EXTRACTION"}


def _peft_module(lora: LoRALinear, rows: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A', B') of the LoRA restricted to output rows [start, end), or None when no part writes there."""
    start, end = rows
    a_blocks, b_columns = [], []
    for name, (p_start, p_end) in lora.parts.items():
        low, high = max(start, p_start), min(end, p_end)
        if low >= high:
            continue
        b = torch.zeros(end - start, lora.r, dtype=lora.lora_B[name].dtype)
        b[low - start : high - start] = lora.lora_B[name].detach().cpu()[low - p_start : high - p_start]
        a_blocks.append(lora.lora_A[name].detach().cpu())
        b_columns.append(b)
    if not a_blocks:
        return None
    return torch.cat(a_blocks, dim=0), torch.cat(b_columns, dim=1)  # (r', in), (rows, r')


def export_peft(
    model: nn.Module,
    directory: str | Path,
    base_directory: str | Path | None = None,
    tokenizer=None,
    *,
    base_name: str | None = None,
) -> Path:
    """Write `model`'s LoRA adapter as peft's adapter_config.json + adapter_model.safetensors into
    `directory` (created if needed; plmkit.convert.export_peft_checkpoint, `plm export-peft`, writes a
    checkpoint's adapter atomically into a new folder).

    With `base_directory`, also write the (unmerged) base model there with plmkit.model.hf.save_hf and
    record it as base_model_name_or_path (or `base_name`: the folder's final name when `base_directory`
    is a temporary one)."""
    config = require_config(model, "export a peft adapter")
    if config.method != "lora":
        raise ConfigError(f"export_peft writes LoRA adapters; this model carries {config.method}")
    if not isinstance(model, PretrainedModel) or type(model).__name__ not in (
        *TASK_TYPES,
        "MaskedLM",
        "PrefixLM",
    ):
        raise ConfigError(
            f"export_peft supports the language models and TransformerModel that save_hf "
            f"exports, not {type(model).__name__}"
        )
    if config.options.get("train_head"):
        raise ConfigError("export_peft cannot express a fully trained task head (train_head=True)")
    loras = lora_modules(model)
    c = model.config
    arch = _hf_architecture_for(model)
    rules = {r.ours: r for r in arch.weights(c, not isinstance(model, TransformerModel))}
    options = config.options
    r, scaling, rslora = options["r"], _scaling(options), options["rslora"]
    alpha = options["alpha"] if options["alpha"] is not None else 2.0 * r
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    fan_in_fan_out = False
    for name, lora in loras:
        rule = rules.get(f"{name}.weight")
        if rule is None:
            raise ConfigError(f"LoRA on {name} has no Hugging Face {arch.model_type} equivalent to export")
        fan_in_fan_out |= rule.transpose
        sizes = [p.shape[0] for p in _split(lora.weight, rule, c)]
        start = 0
        for theirs, size in zip(rule.theirs, sizes):
            rows, start = (start, start + size), start + size
            pair = _peft_module(lora, rows)
            if pair is None:
                continue
            module = _module_path(theirs, model)
            tensors[f"base_model.model.{module}.lora_A.weight"] = pair[0].contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = pair[1].contiguous()
            rank = pair[0].shape[0]
            if rank != r:  # several of our parts in one of their modules
                rank_pattern[module] = rank
                alpha_pattern[module] = scaling * (math.sqrt(rank) if rslora else rank)
    modules = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in tensors})
    if base_directory is not None:
        _save_unmerged_base(model, tokenizer, base_directory, loras)
    peft_config = {
        "peft_type": "LORA",
        "task_type": TASK_TYPES.get(type(model).__name__),
        "base_model_name_or_path": base_name
        if base_name is not None
        else (str(base_directory) if base_directory is not None else None),
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": options["dropout"],
        "use_rslora": rslora,
        "target_modules": modules,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    return directory


def _scaling(options: dict) -> float:
    alpha = options["alpha"] if options["alpha"] is not None else 2.0 * options["r"]
    return alpha / (math.sqrt(options["r"]) if options["rslora"] else options["r"])


def _module_path(weight_name: str, model: nn.Module) -> str:
    """The module's name inside the transformers model: a bare model (BertModel, LlamaModel) has no
    `bert.` / `model.` / `transformer.` body prefix."""
    path = weight_name.removesuffix(".weight")
    if isinstance(model, TransformerModel):
        prefix = next((p for p in BODY_PREFIXES if path.startswith(p)), "")
        path = path[len(prefix) :]
    return path


def _save_unmerged_base(model: nn.Module, tokenizer, directory: str | Path, loras) -> None:
    merged = [lora for _, lora in loras if lora.merged]
    for lora in merged:
        lora.unmerge()
    try:
        save_hf(model, tokenizer, directory)
    finally:
        for lora in merged:
            lora.merge()
