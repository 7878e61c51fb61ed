"""Checkpoint folder in, checkpoint folder out: the library behind `plm convert`, `plm merge-lora` and
`plm quantize`.

    import_hf("hf/gpt2", "runs/gpt2")                       # Hugging Face folder -> plmkit checkpoint
    export_hf("runs/gpt2", "hf/out")                         # plmkit checkpoint -> transformers' format
    merge_adapter("runs/lora/checkpoints/step-00001000", "runs/merged")   # LoRA folded into the weights
    quantize_checkpoint("runs/demo/checkpoints/step-00000600", "runs/int8", "int8")
    export_peft_checkpoint("runs/lora/checkpoints/step-00001000", "peft/adapter", "peft/base")  # for peft

Each reads with plmkit.load (a plmkit checkpoint or a Hugging Face folder) and returns the model it wrote.
Its output follows plmkit.files.check_output_folder, checked before anything is read: never an input (nor
inside or above one), no existing checkpoint or non-empty folder unless `overwrite`; it is written into a
temporary sibling renamed into place at the end, so a failure (Ctrl-C, a full disk) leaves nothing. The io layer: it imports plmkit.io and below
(peft, quant, model), so peft and quant stay free of file formats. Gathering a sharded training
checkpoint (`plm convert --from-sharded`) needs the training strategies: it is
plmkit.train.distributed.consolidate.consolidate_checkpoint.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from plmkit.errors import ConfigError, OutputError
from plmkit.files import nesting, output_folder
from plmkit.io import load, write_checkpoint
from plmkit.model.hf import load_hf, save_hf
from plmkit.weights import WEIGHTS_FILE


def import_hf(hf_folder: str | Path, out: str | Path, *, overwrite: bool = False) -> torch.nn.Module:
    """A Hugging Face model folder (config.json + weights + tokenizer files) saved as a plmkit checkpoint."""
    with output_folder(out, [hf_folder], overwrite, "--out") as tmp:
        model, tokenizer = load_hf(hf_folder)
        write_checkpoint(model, tokenizer, tmp)
    return model


def export_hf(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> torch.nn.Module:
    """A plmkit checkpoint saved as a folder that transformers' from_pretrained loads. A PEFT run's
    checkpoint is refused: the Hugging Face format would hold the base weights alone, dropping the tuning."""
    with output_folder(out, [checkpoint], overwrite, "--out") as tmp:
        model, tokenizer = load(checkpoint)
        peft = getattr(model, "peft_config", None)
        if peft is not None:
            fix = (
                "merge it first with plm merge-lora, or export the adapter for the peft library with "
                f"plm export-peft {checkpoint} --out DIR --base-out DIR"
                if peft.method == "lora"
                else "Hugging Face has no place for it"
            )
            raise ConfigError(f"{checkpoint} carries {peft.method} (a PEFT run's checkpoint): {fix}")
        save_hf(model, tokenizer, tmp)
    return model


def merge_adapter(
    base: str | Path,
    out: str | Path,
    adapter: str | Path | None = None,
    *,
    max_logits_error: float | None = None,
    overwrite: bool = False,
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
    with output_folder(out, [base, adapter], overwrite, "--out") as tmp:
        model, tokenizer = load(base)  # a LoRA run's checkpoint loads with its LoRA already applied
        model = merge(load_adapter(model, adapter), unload=True, max_logits_error=max_logits_error)
        write_checkpoint(model, tokenizer, tmp)
    return model


@dataclass
class QuantizedCheckpoint:
    model: torch.nn.Module
    bytes_before: int  # the input's *.safetensors files (shards too); 0 for a legacy .bin folder
    bytes_after: int  # the output's model.safetensors


def quantize_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    mode: str,
    *,
    embeddings: bool = True,
    backend: str = "torch",
    overwrite: bool = False,
) -> QuantizedCheckpoint:
    """Quantize the checkpoint's weights (plmkit.quant.quantize: int8, int8-dynamic or nf4; `embeddings`
    also quantizes the embeddings and LM head as int8 rows) and save a checkpoint that plmkit.load,
    `plm generate` and `plm eval` use as it is."""
    from plmkit.quant import quantize

    source, out = Path(checkpoint), Path(out)
    with output_folder(out, [source], overwrite, "--out") as tmp:
        model, tokenizer = load(source)
        quantize(model, mode, embeddings=embeddings, backend=backend)
        write_checkpoint(model, tokenizer, tmp)
    before = sum(f.stat().st_size for f in source.glob("*.safetensors"))
    return QuantizedCheckpoint(model, before, (out / WEIGHTS_FILE).stat().st_size)


def export_peft_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    base_out: str | Path | None = None,
    *,
    overwrite: bool = False,
) -> torch.nn.Module:
    """The LoRA adapter of a LoRA run's checkpoint in the peft library's format (plmkit.peft.export_peft) at
    `out`; with `base_out`, also its base model in transformers' format, so that
    `peft.PeftModel.from_pretrained(AutoModelFor...from_pretrained(base_out), out)` gives our logits."""
    if base_out is not None:
        relation = nesting(Path(base_out), Path(out))
        if relation is not None:
            raise OutputError(
                f"--base-out {base_out} {relation} --out {out}: the adapter and the base model need "
                "folders of their own"
            )
    from plmkit.peft import export_peft

    with contextlib.ExitStack() as stack:
        adapter_tmp = stack.enter_context(output_folder(out, [checkpoint], overwrite, "--out"))
        base_tmp = None
        if base_out is not None:
            base_tmp = stack.enter_context(output_folder(base_out, [checkpoint], overwrite, "--base-out"))
        model, tokenizer = load(checkpoint)
        if getattr(model, "peft_config", None) is None:
            raise ConfigError(
                f"{checkpoint} holds no LoRA adapter: give the checkpoint of a LoRA run (a recipe with "
                "peft: {method: lora}); a separate adapter folder loads with plmkit.peft.load_adapter"
            )
        export_peft(
            model, adapter_tmp, base_tmp, tokenizer, base_name=None if base_out is None else str(base_out)
        )
    return model
