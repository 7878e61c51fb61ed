"""Import and export Hugging Face checkpoint folders (config.json + weights + tokenizer files).

    model, tok = load_hf("path/to/hf-folder")     # GPT-2, BERT, RoBERTa, BART, T5, LLaMA, Qwen2, Mixtral, Qwen2-MoE
    save_hf(model, tok, "path/to/out")            # loadable by transformers' from_pretrained

Weights are read from model.safetensors (or a sharded index) and, for legacy folders, from
pytorch_model.bin with `torch.load(weights_only=True)`. Nothing in the folder is ever executed.
The name tables live in the hf_arch package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from plmkit.errors import CheckpointError, did_you_mean
from plmkit.model.config import ModelConfig
from plmkit.model.heads import TransformerModel, with_new_lm_head
from plmkit.model.hf_arch import ARCHITECTURES
from plmkit.model.hf_arch.encoders import pooler_rules
from plmkit.model.hf_arch.rules import Architecture, Rule
from plmkit.model.hf_arch.sentence import read_sentence_transformers, write_sentence_transformers
from plmkit.model.pretrained import PretrainedModel
from plmkit.model.transformer import CausalLM, MaskedLM, Seq2SeqLM

FAMILY_CLASS = {"causal": CausalLM, "masked": MaskedLM, "seq2seq": Seq2SeqLM}
# settings that change training only (not the exported model's outputs in evaluation): not in config.json
TRAINING_ONLY = (
    "dropout",
    "attention_dropout",
    "initializer_range",
    "capacity_factor",  # capacity drops happen in training only
    "router_z_loss_coef",
)


# ---- reading ---------------------------------------------------------------------------------------
def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"model folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json; it is not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f'{path} has no "model_type"; cannot tell the architecture')
    return config


def architecture(model_type: str, where: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f'{where}: model_type "{model_type}" is not supported{did_you_mean(model_type, ARCHITECTURES)}; '
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


class WeightFiles:
    """Name -> tensor access over model.safetensors, a sharded safetensors index, or pytorch_model.bin."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, Path] = {}  # tensor name -> file
        self._bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = directory / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
                    raise CheckpointError(f"{index} is not a valid weight index: {e}") from e
                self.files = {name: directory / file for name, file in weight_map.items()}
                for file in set(self.files.values()):
                    if not file.is_file():
                        raise CheckpointError(f"{index} lists {file.name}, which is missing from {directory}")
                return
        for single in ("model.safetensors", "pytorch_model.bin"):
            path = directory / single
            if path.is_file():
                self.files = {name: path for name in self._names(path)}
                return
        raise CheckpointError(
            f"{directory} has no weights: expected model.safetensors, a sharded model.safetensors.index.json, "
            "or pytorch_model.bin"
        )

    def _names(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as f:
                    return list(f.keys())
            except Exception as e:
                raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
        return list(self._bin(path))

    def _bin(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._bin_cache:
            try:  # weights_only: a .bin is a pickle; never let it run code
                self._bin_cache[path] = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(
                    f"{path} cannot be read safely (truncated, corrupt or not weights): {e}"
                ) from e
        return self._bin_cache[path]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return list(self.files)

    def get(self, name: str) -> torch.Tensor:
        path = self.files[name]
        if path.suffix != ".safetensors":
            return self._bin(path)[name]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as e:
            raise CheckpointError(
                f"{path}: cannot read tensor {name}, the file is truncated or corrupt: {e}"
            ) from e


BODY_PREFIXES = ("transformer.", "model.", "bert.", "roberta.")


def _resolve_prefix(files: WeightFiles, rules: list[Rule]) -> list[Rule]:
    """A bare-model checkpoint (BertModel, LlamaModel) stores `embeddings.x` where the LM stores
    `bert.embeddings.x`, and vice versa: rename the body's names to the prefix the files use."""
    probe = rules[0].theirs[0]
    expected = next((p for p in BODY_PREFIXES if probe.startswith(p)), "")
    body = probe[len(expected) :]
    found = next((p for p in ("", *BODY_PREFIXES) if p + body in files), None)
    if found is None or found == expected:
        return rules

    def rename(name: str) -> str:
        return found + name[len(expected) :] if name.startswith(expected) else name

    return [Rule(r.ours, tuple(rename(t) for t in r.theirs), r.transpose) for r in rules]


def load_hf(
    directory: str | Path, dtype: torch.dtype | None = None, lm_head: bool = False
) -> tuple[PretrainedModel, Any]:
    """(plmkit model, plmkit Tokenizer or None) from a Hugging Face model folder.

    The model is the family LM when the checkpoint has the LM head's weights (tied heads always do),
    else the bare `TransformerModel` (e.g. sentence encoders saved as BertModel), which follows a
    sentence-transformers folder's modules.json in `embed()`. `lm_head=True` asks for the LM in any
    case: a bare encoder gets a freshly initialised head (a warning lists the new weights). Weights
    keep the model's fp32 unless `dtype` is given.
    """
    directory = Path(directory)
    hf_config = read_hf_config(directory)
    arch = architecture(hf_config["model_type"], str(directory / "config.json"))
    config = arch.to_config(hf_config).replace(**arch.dropout.read(hf_config))  # fine-tuning uses them
    config.extra = {"hf_model_type": arch.model_type}
    files = WeightFiles(directory)
    if "final_logits_bias" in files and files.get("final_logits_bias").any():
        config.lm_head_bias = True  # BART: a non-zero output bias is part of the model

    rules = _resolve_prefix(files, arch.weights(config, True) + pooler_rules(arch.model_type))
    head = [t for r in rules if r.ours.startswith("lm_head.") for t in r.theirs]
    has_head = all(t in files for t in head)
    has_pooler = any(r.ours.startswith("pooler.") and r.theirs[0] in files for r in rules)
    if has_head:
        model: PretrainedModel = FAMILY_CLASS[config.family](config)
        rules = [r for r in rules if not r.ours.startswith("pooler.")]  # the LM does not use it
    else:
        if config.family == "seq2seq":
            raise CheckpointError(
                f"{directory}: the checkpoint has no LM head weights ({head[0]}); "
                "encoder-decoder models are loaded with their head"
            )
        model = TransformerModel(config, pooler=has_pooler, **read_sentence_transformers(directory))
        rules = [
            r
            for r in rules
            if not r.ours.startswith("lm_head.") and (has_pooler or not r.ours.startswith("pooler."))
        ]
    _load_rules(model, files, rules, directory)
    if lm_head and isinstance(model, TransformerModel):
        model = with_new_lm_head(model, str(directory))
    if dtype is not None:
        model.to(dtype)
    from plmkit.tokenizer.hf import load_hf_tokenizer  # a folder may or may not carry a tokenizer

    return model.eval(), load_hf_tokenizer(directory, required=False)


def _load_rules(model: PretrainedModel, files: WeightFiles, rules: list[Rule], directory: Path) -> None:
    params = dict(model.named_parameters())  # tied parameters appear once
    buffers = dict(model.named_buffers())
    state = model.state_dict()
    loaded: set[str] = set()
    for rule in rules:
        missing = [t for t in rule.theirs if t not in files]
        if missing:
            raise CheckpointError(
                f"{directory}: weight {missing[0]} is missing from the checkpoint (needed for {rule.ours}); "
                "the files are incomplete or the config.json does not describe them"
            )
        if rule.ours not in state:
            raise CheckpointError(f"internal mapping error: {rule.ours} is not a plmkit parameter")
        target = state[rule.ours]
        parts = [files.get(t) for t in rule.theirs]
        if rule.transpose:
            parts = [p.t() for p in parts]
        if rule.row and parts[0].dim() == 2 and parts[0].shape[0] == 1:
            parts = [parts[0][0]]
        # each stored tensor must have exactly the shape its slice of our (possibly fused) tensor has
        expected = [tuple(p.shape) for p in _split(target, rule, model.config)]
        for name, part, want in zip(rule.theirs, parts, expected):
            if tuple(part.shape) != want:
                raise CheckpointError(
                    f"{directory}: weight {name} has shape {list(part.shape)} but config.json implies "
                    f"{list(want)}; the weights do not match the config"
                )
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        with torch.no_grad():  # stacked experts: E tensors (or gate|up pairs) along a new first dim
            state[rule.ours].copy_(tensor.reshape(target.shape))
        loaded.add(rule.ours)
    # every parameter must have come from the file (tied ones through their source)
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if n not in params}
    not_loaded = [n for n in params if n not in loaded and n not in tied and n not in buffers]
    if not_loaded:
        raise CheckpointError(
            f"{directory}: no weights found for {len(not_loaded)} parameters ({', '.join(not_loaded[:3])}, ...)"
        )


# ---- writing ---------------------------------------------------------------------------------------
def _hf_architecture_for(model: PretrainedModel) -> Architecture:
    source = model.config.extra.get("hf_model_type")
    if source:
        return ARCHITECTURES[source]
    c = model.config
    if c.family == "seq2seq":
        return ARCHITECTURES["t5" if c.position == "relative" else "bart"]
    if c.family in ("masked", "prefix"):
        return ARCHITECTURES["roberta" if c.position_offset else "bert"]
    if c.n_experts is not None:
        return ARCHITECTURES["qwen2_moe" if c.n_shared_experts else "mixtral"]
    if c.position == "rotary":
        return ARCHITECTURES["qwen2" if c.qkv_bias and not c.attention_bias else "llama"]
    return ARCHITECTURES["gpt2"]


def save_hf(model: PretrainedModel, tokenizer: Any, directory: str | Path) -> Path:
    """Write a folder that transformers' `from_pretrained` loads: config.json, model.safetensors, tokenizer."""
    if getattr(model, "quant_config", None) is not None:  # plmkit.quant
        raise CheckpointError(
            f"this model is quantized ({model.quant_config.mode}) and Hugging Face checkpoints hold float weights; "
            "save it with plmkit.save, or export the float model (plmkit.quant.dequantize(model) first: "
            "the dequantized values)"
        )
    directory = Path(directory)
    arch = _hf_architecture_for(model)
    c = model.config
    has_head = not isinstance(model, TransformerModel)
    hf_config = {
        "model_type": arch.model_type,
        "architectures": [arch.lm_class if has_head else arch.base_class],
        **arch.from_config(c),
        **arch.dropout.write(c),
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    # check that the exported config describes this model exactly (every switch has an HF equivalent)
    roundtrip = arch.to_config(hf_config)
    weight_defined = {"lm_head_bias"} if arch.model_type == "bart" else set()  # from final_logits_bias
    exported = _behaviour(roundtrip)
    differences = [
        k
        for k, v in _behaviour(c).items()
        if k not in weight_defined
        if k not in ("extra", "family", *TRAINING_ONLY) and exported[k] != v
    ]
    if differences:
        raise CheckpointError(
            f"this model cannot be expressed as Hugging Face {arch.model_type}: fields "
            f"{', '.join(differences)} have no equivalent there"
        )
    state = model.state_dict()
    rules = arch.weights(c, has_head)
    if not has_head:
        rules = [r for r in rules if not r.ours.startswith("lm_head.")]
        if getattr(model, "pooler", None) is not None:
            rules += pooler_rules(arch.model_type)
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        tensor = state[rule.ours]
        parts = _split(tensor, rule, c)
        for name, part in zip(rule.theirs, parts, strict=True):
            part = part.t() if rule.transpose else part
            out[name] = (part[None] if rule.row else part).contiguous()
    if has_head and c.tie_embeddings:
        _add_tied_names(out, arch, c)
    if arch.model_type == "bart" and has_head and "final_logits_bias" not in out:
        out["final_logits_bias"] = torch.zeros(1, c.vocab_size, dtype=next(model.parameters()).dtype)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_unshare(out), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if isinstance(model, TransformerModel):  # a sentence encoder stays one (pooling, normalize)
        write_sentence_transformers(model, directory)
    if tokenizer is not None:
        from plmkit.tokenizer.hf import save_hf_tokenizer  # noqa: PLC0415

        save_hf_tokenizer(tokenizer, directory, model_max_length=c.max_positions)
    return directory


def _behaviour(c: ModelConfig) -> dict[str, Any]:
    """The config's fields with the experts' widths resolved: n shared experts of width F are one of
    width n·F, and a null width is the default it stands for."""
    fields = c.to_dict()
    if c.n_experts is not None:
        shared = c.shared_expert_width if c.n_shared_experts else None
        fields.update(
            expert_d_ff=c.expert_width, shared_expert_d_ff=shared, n_shared_experts=min(c.n_shared_experts, 1)
        )
    return fields


def _split(tensor: torch.Tensor, rule: Rule, c: ModelConfig) -> list[torch.Tensor]:
    if tensor.dim() == 3:  # stacked experts (E, out, in): expert by expert, gate | up within one
        return list(tensor.reshape(-1, tensor.shape[-1]).chunk(len(rule.theirs), dim=0))
    if len(rule.theirs) == 1:
        return [tensor]
    if len(rule.theirs) == 3:  # q | k | v
        q, kv = c.n_head * c.dim_per_head, c.kv_heads * c.dim_per_head
        return list(tensor.split([q, kv, kv], dim=0))
    return list(tensor.chunk(2, dim=0))  # k | v  or  gate | up


def _add_tied_names(out: dict[str, torch.Tensor], arch: Architecture, c: ModelConfig) -> None:
    """transformers expects the tied copies under their own names in some architectures."""
    if arch.model_type in ("bart",):
        shared = out["model.shared.weight"]
        out["model.encoder.embed_tokens.weight"] = shared
        out["model.decoder.embed_tokens.weight"] = shared
        out["lm_head.weight"] = shared
    elif arch.model_type == "t5":
        shared = out["shared.weight"]
        out["encoder.embed_tokens.weight"] = shared
        out["decoder.embed_tokens.weight"] = shared
        out["lm_head.weight"] = shared


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory; store tied copies as separate tensors."""
    seen: dict[int, str] = {}
    result = {}
    for name, tensor in tensors.items():
        ptr = tensor.data_ptr()
        result[name] = tensor.clone() if ptr in seen else tensor
        seen.setdefault(ptr, name)
    return result
