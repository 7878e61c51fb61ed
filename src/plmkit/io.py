"""The plmkit checkpoint folder: save and load a model (and its tokenizer) as plain files.

A checkpoint is a folder holding

    plmkit.json           {"format": "plmkit", "version": ..., "model_class": "CausalLM", "model": {config},
                           "model_kwargs": {other constructor arguments, e.g. num_labels of a classifier}}
    model.safetensors     the state dict; tied tensors stored once (aliases in the header metadata)
    tokenizer.json        the tokenizer (optional), see plmkit.tokenizer
    tokenizer_config.json

A model with a PEFT method applied (plmkit.peft) records it in plmkit.json as "peft": {"method",
"options"}; `load` rebuilds the base class, applies the method and loads every tensor, so the model
comes back exactly as saved (LoRA unmerged, prefix MLP and all). Its folder also holds the adapter
alone (adapter_config.json + adapter_model.safetensors, see plmkit.peft.io), which `load_adapter` and
`plm merge-lora` read directly.

`save` writes the folder atomically: everything goes into a hidden temporary sibling that is renamed
into place only when complete, so a crash or a full disk never leaves a half-written checkpoint and
never destroys the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plmkit.errors import CheckpointError, ConfigError, DataError, did_you_mean
from plmkit.files import atomic_folder, check_folder_path, read_json, write_json
from plmkit.model.registry import init_kwargs, model_class_name, model_classes
from plmkit.weights import (
    SHARDED_FOLDERS,
    WEIGHTS_FILE,
    load_weights_into,
    save_weights,
    stored_float_dtype,
    unwrap,
)

CONFIG_FILE = "plmkit.json"
FORMAT = "plmkit"


def _version() -> str:
    try:
        from plmkit import __version__

        return __version__
    except ImportError:  # running from a source tree without a package __init__ version
        return "0.1.0"


# ---- save ----------------------------------------------------------------------------------------
def save(model: torch.nn.Module, tokenizer: Any | None, directory: str | Path) -> Path:
    """Write `model` (and `tokenizer`, unless None) as a plmkit checkpoint folder; returns its path. An
    existing checkpoint there is replaced (atomically); any other non-empty folder is refused."""
    target = Path(directory)
    check_folder_path(target, "checkpoint folder")
    if target.is_dir() and any(target.iterdir()) and not (target / CONFIG_FILE).exists():
        # Replacing the folder would delete the user's files: only ever replace a checkpoint.
        raise CheckpointError(
            f"refusing to overwrite {target}: it is not empty and not a plmkit checkpoint "
            f"(no {CONFIG_FILE}); choose another folder"
        )
    with atomic_folder(target) as tmp:
        write_checkpoint(model, tokenizer, tmp)
    return target


def write_checkpoint(model: torch.nn.Module, tokenizer: Any | None, folder: Path) -> None:
    """The files of a checkpoint, written into the existing (temporary) `folder`; `save` and the commands'
    plmkit.files.output_folder make it atomic."""
    model = unwrap(model)
    write_json(folder / CONFIG_FILE, checkpoint_header(model))
    save_weights(model, folder / WEIGHTS_FILE)
    if getattr(model, "peft_config", None) is not None:
        from plmkit.peft.io import save_adapter

        save_adapter(model, folder)  # the adapter alone, beside the full model
    if tokenizer is not None:
        tokenizer.save(folder)


def checkpoint_header(model: torch.nn.Module) -> dict[str, Any]:
    """The plmkit.json contents that rebuild `model` (class, config, constructor arguments)."""
    model = unwrap(model)
    header = {
        "format": FORMAT,
        "version": _version(),
        "model_class": model_class_name(model),
        "model": model.config.to_dict(),
        "model_kwargs": init_kwargs(model),
    }
    if getattr(model, "quant_config", None) is not None:  # plmkit.quant: load rebuilds the layers
        header["quantization"] = model.quant_config.to_dict()
    peft = getattr(model, "peft_config", None)
    if peft is not None:
        header["peft"] = peft.to_dict()
    return header


# ---- load ----------------------------------------------------------------------------------------
def detect_format(directory: str | Path) -> str | None:
    """ "plmkit", "hf" (a Hugging Face model folder), or None when the folder is neither."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return "plmkit"
    if (directory / "config.json").is_file():
        return "hf"
    return None


def load(
    directory: str | Path, device: str | torch.device = "cpu", lm_head: bool = False
) -> tuple[torch.nn.Module, Any | None]:
    """Rebuild (model in eval mode, tokenizer or None) from a folder written by `save`, or from a
    Hugging Face model folder (see plmkit.model.hf). `lm_head=True`: a bare encoder (TransformerModel)
    comes back as its family's LM with a freshly initialised head (a warning lists the new weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    kind = detect_format(directory)
    if kind == "hf":  # a Hugging Face folder (config.json + weights) is read directly
        from plmkit.model.hf import load_hf

        model, tokenizer = load_hf(directory, lm_head=lm_head)
        return model.to(device), tokenizer
    if kind != "plmkit":
        raise CheckpointError(
            f"{directory} is not a model checkpoint: it has neither {CONFIG_FILE} (plmkit) "
            "nor config.json (Hugging Face)"
        )
    weights = directory / WEIGHTS_FILE
    sharded = [name for name in SHARDED_FOLDERS if (directory / name).is_dir()]
    if sharded and not weights.is_file():
        raise CheckpointError(
            f"{directory} is a sharded training checkpoint ({sharded[0]}/, written by a "
            f"distributed run); make a single-file checkpoint first: plm convert "
            f"--from-sharded {directory} --out DIR"
        )
    model = build_from_header(directory / CONFIG_FILE)
    dtype = stored_float_dtype(weights)
    if dtype is not None:
        model.to(dtype)  # a bf16 checkpoint comes back in bf16
    load_weights_into(model, weights)
    if lm_head and model_class_name(model) == "TransformerModel":
        from plmkit.model.heads import with_new_lm_head

        model = with_new_lm_head(model, str(directory))
    model.to(device)
    return model.eval(), _load_tokenizer(directory)


def read_header(path: Path) -> dict[str, Any]:
    """The parsed plmkit.json, checked for the keys `load` needs."""
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is not a plmkit checkpoint: no {path.name}")
    header = read_json(path, "plmkit checkpoint header")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not a plmkit checkpoint header (expected "format": "{FORMAT}")')
    for key in ("model_class", "model"):
        if key not in header:
            raise CheckpointError(f'{path} has no "{key}" entry; the checkpoint is incomplete')
    return header


def build_from_header(path: Path) -> torch.nn.Module:
    """An untrained model of the class and config recorded in plmkit.json: quantized layers first, then
    the PEFT method on top (a QLoRA checkpoint is LoRA on an int8 / NF4 base)."""
    from plmkit.model import ModelConfig

    header = read_header(path)
    classes = model_classes()
    name = header["model_class"]
    if name not in classes:
        raise CheckpointError(
            f'{path}: unknown model_class "{name}"{did_you_mean(name, classes)}; known: {", ".join(classes)}'
        )
    try:
        config = ModelConfig.from_dict(header["model"], where=f"{path}: model")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e
    kwargs = header.get("model_kwargs", {})
    cls = classes[name]
    try:
        model = getattr(cls, "from_config", cls)(config, **kwargs)
    except TypeError as e:
        raise CheckpointError(f"{path}: cannot build {name} with model_kwargs {kwargs}: {e}") from e
    if "quantization" in header:  # int8 / NF4 layers (plmkit.quant), filled by the weights file
        from plmkit.quant import rebuild

        try:
            rebuild(model, header["quantization"], str(path))
        except ConfigError as e:
            raise CheckpointError(str(e)) from e
    peft = header.get("peft")
    if peft is not None and getattr(model, "peft_config", None) is None:  # a wrapper class rebuilds itself
        from plmkit.peft.io import reapply

        if not isinstance(peft, dict) or "method" not in peft:
            raise CheckpointError(
                f'{path}: "peft" must be {{"method": ..., "options": {{...}}}}, got {peft!r}'
            )
        model = reapply(model, peft["method"], peft.get("options", {}), str(path))
    return model


def _load_tokenizer(directory: Path) -> Any | None:
    from plmkit.tokenizer import TOKENIZER_FILE, Tokenizer

    if not (directory / TOKENIZER_FILE).exists():
        return None
    try:
        return Tokenizer.load(directory)
    except DataError as e:
        raise CheckpointError(str(e)) from e
