"""Checkpoint folder in, checkpoint folder out: the library behind `plm convert`, `plm merge-lora` and
`plm quantize`.

    import_hf("hf/gpt2", "runs/gpt2")                       # Hugging Face folder -> plmkit checkpoint
    export_hf("runs/gpt2", "hf/out")                         # plmkit checkpoint -> transformers' format
    merge_adapter("runs/lora/checkpoints/step-00001000", "runs/merged")   # LoRA folded into the weights
    quantize_checkpoint("runs/demo/checkpoints/step-00000600", "runs/int8", "int8")

Each reads with plmkit.load (a plmkit checkpoint or a Hugging Face folder), writes atomically with
plmkit.save / save_hf and returns the model it wrote. The io layer: it imports plmkit.io and below
(peft, quant, model), so peft and quant stay free of file formats. Gathering a sharded training
checkpoint (`plm convert --from-sharded`) needs the training strategies: it is
plmkit.train.distributed.consolidate.consolidate_checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from plmkit.errors import ConfigError
from plmkit.io import load, save
from plmkit.model.hf import load_hf, save_hf
from plmkit.weights import WEIGHTS_FILE


def import_hf(hf_folder: str | Path, out: str | Path) -> torch.nn.Module:
    """A Hugging Face model folder (config.json + weights + tokenizer files) saved as a plmkit checkpoint."""
    model, tokenizer = load_hf(hf_folder)
    save(model, tokenizer, out)
    return model


def export_hf(checkpoint: str | Path, out: str | Path) -> torch.nn.Module:
    """A plmkit checkpoint saved as a folder that transformers' from_pretrained loads. A PEFT run's
    checkpoint is refused: the Hugging Face format would hold the base weights alone, dropping the tuning."""
    model, tokenizer = load(checkpoint)
    peft = getattr(model, "peft_config", None)
    if peft is not None:
        fix = (
            "merge it first with plm merge-lora"
            if peft.method == "lora"
            else "Hugging Face has no place for it"
        )
        raise ConfigError(
            f"{checkpoint} carries {peft.method} (a PEFT run's checkpoint): {fix}; "
            "plmkit.peft.export_peft writes a LoRA adapter for the peft library"
        )
    save_hf(model, tokenizer, out)
    return model


def merge_adapter(
    base: str | Path,
    out: str | Path,
    adapter: str | Path | None = None,
    *,
    max_logits_error: float | None = None,
) -> torch.nn.Module:
    """Load `base`, apply the LoRA adapter saved in `adapter` (plmkit.peft.save_adapter), fold it into the
    weights (W += s·BA) and save a plain checkpoint that needs no PEFT code. Without `adapter`, `base` is a
    LoRA run's checkpoint, which holds base and adapter. A quantized base is requantized: the returned
    model's `merge_report` says how much the logits changed (above `max_logits_error` the merge is refused)."""
    from plmkit.peft import load_adapter, merge
    from plmkit.peft.io import CONFIG_FILE, read_adapter_config

    if adapter is None and not (Path(base) / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{base} holds no adapter (no {CONFIG_FILE}): give the adapter folder (--adapter DIR), "
            "or a checkpoint of a LoRA run as the base"
        )
    adapter = (
        base if adapter is None else adapter
    )  # a LoRA run's checkpoint holds its adapter beside the model
    method = read_adapter_config(adapter)["method"]  # CheckpointError when the folder is not an adapter
    if method != "lora":
        raise ConfigError(
            f"{adapter} holds a {method} adapter; only LoRA adapters can be merged into the base weights"
        )
    model, tokenizer = load(base)  # a LoRA run's checkpoint loads with its LoRA already applied
    model = merge(load_adapter(model, adapter), unload=True, max_logits_error=max_logits_error)
    save(model, tokenizer, out)
    return model


@dataclass
class QuantizedCheckpoint:
    model: torch.nn.Module
    bytes_before: int  # the input's *.safetensors files (shards too); 0 for a legacy .bin folder
    bytes_after: int  # the output's model.safetensors


def quantize_checkpoint(
    checkpoint: str | Path, out: str | Path, mode: str, *, embeddings: bool = True, backend: str = "torch"
) -> QuantizedCheckpoint:
    """Quantize the checkpoint's weights (plmkit.quant.quantize: int8, int8-dynamic or nf4; `embeddings`
    also quantizes the embeddings and LM head as int8 rows) and save a checkpoint that plmkit.load,
    `plm generate` and `plm eval` use as it is."""
    from plmkit.quant import quantize

    source, out = Path(checkpoint), Path(out)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ConfigError(
            f"the output folder {out} is the input checkpoint; write the quantized copy to another folder"
        )
    model, tokenizer = load(source)
    quantize(model, mode, embeddings=embeddings, backend=backend)
    save(model, tokenizer, out)
    before = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    return QuantizedCheckpoint(model, before, (out / WEIGHTS_FILE).stat().st_size)
