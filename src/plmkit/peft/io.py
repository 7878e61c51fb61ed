"""Adapter-only checkpoints: only the PEFT parameters, a few hundred KB instead of the whole model.

A folder holding
    adapter_config.json        {"format": "plmkit-adapter", "version", "method", "options",
                                "base_model_class", "base_config_hash", "base_config": {shape fields},
                                "n_parameters"}
    adapter_model.safetensors  the PEFT parameters under their names in the model
                               (e.g. transformer.blocks.0.attn.qkv.lora_A.all)

`load_adapter(model, dir)` applies the recorded method to a base model (unless it already carries
it) and copies the tensors in. A base of another architecture is refused with a CheckpointError that
names the differing config fields or tensor shapes. Prefix-tuning adapters hold the folded prefixes
(no MLP): they load as `projection: false` prefixes and give the same outputs. (The file names are those of the peft library;
its own format is written by `plmkit.peft.export_peft`.)
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from plmkit.errors import CheckpointError, PlmkitError
from plmkit.peft.base import (
    SHAPE_FIELDS,
    base_model,
    config_hash,
    get_config,
    mark_only_peft_trainable,
    peft_parameter_names,
    require_config,
)
from plmkit.peft.prefix import fold, folded_adapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "plmkit-adapter"
_INIT_ONLY = ("init_text", "init_ids")  # prompt options that only choose start values (weights replace them)


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write the PEFT parameters and the method's options to `directory`; returns its path."""
    from plmkit import __version__

    config = require_config(model, "save an adapter")
    base = base_model(model)
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().contiguous() for name in peft_parameter_names(model)}
    options = config.options
    if config.method == "prefix":  # the prefixes themselves, not the MLP that computes them
        tensors, options = folded_adapter(model, tensors, options)
    header = {
        "format": FORMAT,
        "version": __version__,
        "method": config.method,
        "options": options,
        "base_model_class": type(base).__name__,
        "base_config_hash": config_hash(base.config),
        "base_config": {f: getattr(base.config, f) for f in SHAPE_FIELDS},
        "n_parameters": sum(t.numel() for t in tensors.values()),
    }
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save adapter: {directory} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    # each file is written beside its final name and renamed into place: never half a file
    tmp = directory / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_FILE)
    tmp = directory / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, directory / CONFIG_FILE)
    return directory


def read_adapter_config(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise CheckpointError(f"adapter folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an adapter folder: no {CONFIG_FILE}")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e
    if isinstance(header, dict) and "peft_type" in header:
        raise CheckpointError(
            f"{path} is a peft-library adapter ({header['peft_type']}); plmkit loads its own "
            "adapters (plmkit.peft.save_adapter); use peft.PeftModel on the Hugging Face model"
        )
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not a plmkit adapter config (expected "format": "{FORMAT}")')
    for key in ("method", "options", "base_config"):
        if key not in header:
            raise CheckpointError(f'{path} has no "{key}" entry; the adapter is incomplete')
    return header


def _architecture_differences(header: dict, config) -> list[str]:
    stored = header["base_config"]
    return [
        f"{f}={stored[f]!r} (this base: {getattr(config, f)!r})"
        for f in SHAPE_FIELDS
        if f in stored and stored[f] != getattr(config, f)
    ]


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the adapter saved in `directory` to `model` and return the model to use (prompt tuning
    returns a wrapper, the other methods change `model` in place)."""
    directory = Path(directory)
    header = read_adapter_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}; the adapter is incomplete")
    base = base_model(model)
    where = f"adapter {directory} (made for a {header.get('base_model_class', '?')})"
    differences = _architecture_differences(header, base.config)
    if differences:
        raise CheckpointError(
            f"{where} does not fit this {type(base).__name__}: the adapter was trained on a "
            f"base with {', '.join(differences)}; load it onto the base it was trained on"
        )
    current = get_config(model)
    if current is None:
        model = reapply(model, header["method"], header["options"], where)
    elif current.method != header["method"]:
        raise CheckpointError(
            f"{where} holds a {header['method']} adapter but the model already carries "
            f"{current.method}; load it onto a plain base model"
        )
    elif current.method == "prefix" and not header["options"].get("projection", True):
        fold(model)  # the file holds folded prefixes: fold this model's MLP to match
    _copy_tensors(model, weights, where)
    if header.get("base_config_hash") not in (None, config_hash(base.config)):
        warnings.warn(
            f"{where}: the base model's config differs from the one the adapter was trained on "
            "(same shapes); outputs may differ from the trained model's"
        )
    mark_only_peft_trainable(model)
    return model


def reapply(model: nn.Module, method: str, options: dict, where: str) -> nn.Module:
    """Apply a recorded PEFT method (from an adapter or checkpoint header) to a plain base model; the
    options that only chose start values are dropped (the stored weights replace those values)."""
    from plmkit.peft.methods import apply

    if not isinstance(options, dict):
        raise CheckpointError(f"{where}: the PEFT options must be a mapping, got {options!r}")
    options = {k: v for k, v in options.items() if k not in _INIT_ONLY}
    try:
        return apply(model, method, **options)
    except PlmkitError as e:
        raise CheckpointError(f"{where}: cannot apply its {method} settings to this model: {e}") from e


def _copy_tensors(model: nn.Module, weights: Path, where: str) -> None:
    expected = set(peft_parameter_names(model))
    params = dict(model.named_parameters())
    try:
        f = safe_open(str(weights), framework="pt", device="cpu")
    except Exception as e:  # a truncated or corrupt header
        raise CheckpointError(f"{weights} is truncated or corrupt: {e}") from e
    with f:
        names = list(f.keys())
        unknown = [n for n in names if n not in expected]
        missing = [n for n in expected if n not in names]
        if unknown or missing:
            parts = (
                [f"{len(missing)} PEFT tensors missing from the file ({_few(missing)})"] if missing else []
            )
            if unknown:
                parts.append(f"{len(unknown)} tensors the model has no PEFT parameter for ({_few(unknown)})")
            raise CheckpointError(f"{where} does not match the model: {'; '.join(parts)}")
        for name in names:
            found, want = tuple(f.get_slice(name).get_shape()), tuple(params[name].shape)
            if found != want:
                raise CheckpointError(
                    f"{where}: tensor {name} has shape {list(found)} but the model expects "
                    f"{list(want)}; the adapter belongs to another base architecture"
                )
        with torch.no_grad():
            for name in names:
                params[name].copy_(f.get_tensor(name))


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
