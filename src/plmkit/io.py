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

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from plmkit.errors import CheckpointError, ConfigError, DataError, did_you_mean

CONFIG_FILE = "plmkit.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "plmkit"
TIED_KEY = "tied"  # safetensors metadata key: JSON {alias: source} of tensors stored once
# Training checkpoints of sharded runs hold the weights in one of these folders instead of model.safetensors;
# see plmkit.train.sharded.
DCP_FOLDER = "dcp"  # torch.distributed.checkpoint shards (FSDP, tensor parallelism)
DEEPSPEED_FOLDER = "deepspeed"  # the DeepSpeed engine's own files
SHARDED_FOLDERS = (DCP_FOLDER, DEEPSPEED_FOLDER)

# Model classes defined outside plmkit.model (PEFT wrappers, user models) register here.
_EXTRA_MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Make `load` able to rebuild `cls` (usable as a decorator); see `init_kwargs` for its arguments."""
    _EXTRA_MODEL_CLASSES[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, type]:
    """Name -> class of every model `load` can rebuild from `plmkit.json`."""
    # Imported here, not at module top, so that plmkit.io stays importable while plmkit.model imports it.
    from plmkit.data.objectives.electra import ElectraPretrainer  # a model-level objective
    from plmkit.model import MODEL_CLASSES  # the four families and the task heads

    return {**MODEL_CLASSES, "ElectraPretrainer": ElectraPretrainer, **_EXTRA_MODEL_CLASSES}


def init_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """The constructor arguments besides `config` that rebuild `model` (JSON-able), e.g. num_labels.

    A class may say so itself with an `init_kwargs()` method; otherwise each argument of its
    `__init__` is read from the attribute of the same name, and arguments with no such attribute
    must have a default.
    """
    if callable(getattr(model, "init_kwargs", None)):
        return dict(model.init_kwargs())
    kwargs = {}
    for name, param in list(inspect.signature(type(model).__init__).parameters.items())[2:]:  # self, config
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(model, name):
            kwargs[name] = getattr(model, name)
        elif param.default is param.empty:
            raise CheckpointError(f"cannot save {type(model).__name__}: its constructor argument {name!r} is "
                                  f"not stored as model.{name}, so load could not rebuild it; store it or "
                                  "add an init_kwargs() method")
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise CheckpointError(f"cannot save {type(model).__name__}: constructor arguments {sorted(kwargs)} "
                              f"are not JSON values ({e}); add an init_kwargs() method") from e
    return kwargs


def _version() -> str:
    try:
        from plmkit import __version__

        return __version__
    except ImportError:  # running from a source tree without a package __init__ version
        return "0.1.0"


# ---- save ----------------------------------------------------------------------------------------
def save(model: torch.nn.Module, tokenizer: Any | None, directory: str | Path) -> Path:
    """Write `model` (and `tokenizer`, unless None) as a plmkit checkpoint folder; returns its path."""
    model = unwrap(model)
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot save checkpoint: {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / CONFIG_FILE).exists():
        # Replacing the folder would delete the user's files: only ever replace a checkpoint.
        raise CheckpointError(f"refusing to overwrite {target}: it is not empty and not a plmkit checkpoint "
                              f"(no {CONFIG_FILE}); choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left over by an earlier crash of a process with our pid
    try:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint_header(model), indent=2) + "\n", encoding="utf-8")
        save_weights(model, tmp / WEIGHTS_FILE)
        if getattr(model, "peft_config", None) is not None:
            from plmkit.peft.io import save_adapter

            save_adapter(model, tmp)  # the adapter alone, beside the full model
        if tokenizer is not None:
            tokenizer.save(tmp)
        _fsync_folder(tmp)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def checkpoint_header(model: torch.nn.Module) -> dict[str, Any]:
    """The plmkit.json contents that rebuild `model` (class, config, constructor arguments)."""
    model = unwrap(model)
    header = {"format": FORMAT, "version": _version(), "model_class": model_class_name(model),
              "model": model.config.to_dict(), "model_kwargs": init_kwargs(model)}
    if getattr(model, "quant_config", None) is not None:  # plmkit.quant: load rebuilds the layers
        header["quantization"] = model.quant_config.to_dict()
    peft = getattr(model, "peft_config", None)
    if peft is not None:
        header["peft"] = peft.to_dict()
    return header


def model_class_name(model: torch.nn.Module) -> str:
    """The class name `load` rebuilds: FSDP2's `fully_shard` swaps a module's class for a subclass
    (FSDPCausalLM), whose name is not ours, so the first class that is not an FSDP one is taken."""
    for cls in type(model).__mro__:
        if not any(base.__name__ == "FSDPModule" for base in cls.__mro__):
            return cls.__name__
    return type(model).__name__


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile / DistributedDataParallel / DeepSpeed engine wrappers (their names
    are not ours)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif type(model).__module__.startswith("deepspeed.") and isinstance(
            getattr(model, "module", None), torch.nn.Module
        ):  # DeepSpeedEngine (checked by module name: deepspeed is an optional dependency)
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write the state dict to a safetensors file, storing tensors that share memory only once."""
    state = unwrap(model).state_dict()
    _refuse_sharded(state)
    tensors, aliases = _dedupe_shared(state)
    save_file(tensors, str(path), metadata={"format": "pt", TIED_KEY: json.dumps(aliases)})


def _refuse_sharded(state: dict[str, torch.Tensor]) -> None:
    """A DTensor holds one rank's shard (tensor parallel, FSDP2): saving it would write a fragment."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    sharded = [name for name, tensor in state.items() if isinstance(tensor, DTensor)]
    if sharded:
        raise CheckpointError(f"cannot save the model: {len(sharded)} of its tensors (e.g. {sharded[0]}) are "
                              "sharded across processes (DTensor); write a full checkpoint with "
                              "plmkit.train.tensor_parallel.save_tensor_parallel_checkpoint(model, tokenizer, "
                              "directory), called on every rank")


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to write, {alias: source}). safetensors refuses tensors that share memory (tied weights)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}  # exact view -> first name
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:  # empty tensors own no memory to share
            tensors[name] = tensor
            continue
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if view in seen:  # the same tensor under a second name: a tie
            aliases[name] = seen[view]
            continue
        seen[view] = name
        # A different view of memory already written (rare; e.g. a slice of a fused weight): store a
        # private copy, since safetensors cannot express overlapping tensors.
        shared = storage in storages
        storages.add(storage)
        tensors[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor
    return tensors, aliases


def _fsync_folder(folder: Path) -> None:
    """Flush every file of `folder` to disk so that the rename below publishes complete files."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _replace_folder(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` folder to `target`, replacing a previous checkpoint there."""
    if not target.exists():
        os.replace(tmp, target)
        return
    # Folders cannot be replaced in one atomic rename: move the old one aside first, then delete it.
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- load ----------------------------------------------------------------------------------------
def detect_format(directory: str | Path) -> str | None:
    """"plmkit", "hf" (a Hugging Face model folder), or None when the folder is neither."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return "plmkit"
    if (directory / "config.json").is_file():
        return "hf"
    return None


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any | None]:
    """Rebuild (model in eval mode, tokenizer or None) from a folder written by `save`, or from a
    Hugging Face model folder (see plmkit.model.hf)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    kind = detect_format(directory)
    if kind == "hf":  # a Hugging Face folder (config.json + weights) is read directly
        from plmkit.model.hf import load_hf

        model, tokenizer = load_hf(directory)
        return model.to(device), tokenizer
    if kind != "plmkit":
        raise CheckpointError(f"{directory} is not a model checkpoint: it has neither {CONFIG_FILE} (plmkit) "
                              "nor config.json (Hugging Face)")
    weights = directory / WEIGHTS_FILE
    sharded = [name for name in SHARDED_FOLDERS if (directory / name).is_dir()]
    if sharded and not weights.is_file():
        raise CheckpointError(f"{directory} is a sharded training checkpoint ({sharded[0]}/, written by a "
                              f"distributed run); make a single-file checkpoint first: plm convert "
                              f"--from-sharded {directory} --out DIR")
    model = build_from_header(directory / CONFIG_FILE)
    dtype = _stored_float_dtype(weights)
    if dtype is not None:
        model.to(dtype)  # a bf16 checkpoint comes back in bf16
    load_weights_into(model, weights)
    model.to(device)
    return model.eval(), _load_tokenizer(directory)


def read_header(path: Path) -> dict[str, Any]:
    """The parsed plmkit.json, checked for the keys `load` needs."""
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} is not a plmkit checkpoint: no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e
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
        raise CheckpointError(f'{path}: unknown model_class "{name}"{did_you_mean(name, classes)}; '
                              f"known: {', '.join(classes)}")
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
            raise CheckpointError(f'{path}: "peft" must be {{"method": ..., "options": {{...}}}}, got {peft!r}')
        model = reapply(model, peft["method"], peft.get("options", {}), str(path))
    return model


def load_weights_into(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Copy the tensors of a safetensors file into `model` (in place, so tied weights stay tied).

    Every mismatch is a CheckpointError naming the file and the tensor: a missing or truncated file,
    a tensor of the wrong shape, or (with `strict`) tensors missing from the file or unknown to the model.
    """
    path = Path(path)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    with _open_weights(path) as f:
        aliases = json.loads((f.metadata() or {}).get(TIED_KEY, "{}"))
        names = list(f.keys())
        unexpected = [n for n in names if n not in expected]
        for name in names:
            if name in unexpected:
                continue
            found, want = tuple(f.get_slice(name).get_shape()), tuple(expected[name].shape)
            if found != want:
                raise CheckpointError(f"{path}: tensor {name} has shape {list(found)}, but the model expects "
                                      f"{list(want)}; the checkpoint belongs to another configuration")
            state[name] = _read_tensor(f, name, path)
    for alias, source in aliases.items():
        if source in state and alias in expected:
            state[alias] = state[source]
    missing = [n for n in expected if n not in state]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing from the file ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors unknown to {type(model).__name__} ({_few(unexpected)})")
        raise CheckpointError(f"{path} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def _open_weights(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # SafetensorError on a truncated or corrupt header
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e


def _read_tensor(f: Any, name: str, path: Path) -> torch.Tensor:
    try:
        return f.get_tensor(name)
    except Exception as e:
        message = f"{path}: cannot read tensor {name}, the file is truncated or corrupt: {e}"
        raise CheckpointError(message) from e


def _stored_float_dtype(path: Path) -> torch.dtype | None:
    """The one floating dtype of the file's tensors, or None when mixed (or the file has none)."""
    with _open_weights(path) as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    floats = {names[d] for d in dtypes if d in names}
    return floats.pop() if len(floats) == 1 else None


def _load_tokenizer(directory: Path) -> Any | None:
    from plmkit.tokenizer import TOKENIZER_FILE, Tokenizer

    if not (directory / TOKENIZER_FILE).exists():
        return None
    try:
        return Tokenizer.load(directory)
    except DataError as e:
        raise CheckpointError(str(e)) from e


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
