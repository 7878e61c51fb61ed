"""The model registry: every class a checkpoint may name in plmkit.json, and what rebuilds it."""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch

from plmkit.errors import CheckpointError
from plmkit.model.config import ModelConfig
from plmkit.model.csc import SpellingCorrector
from plmkit.model.electra import ElectraPretrainer
from plmkit.model.heads import RewardModel, SequenceClassifier, SpanQA, TokenClassifier, TransformerModel
from plmkit.model.presets import get_preset
from plmkit.model.pretrained import PretrainedModel
from plmkit.model.transformer import CausalLM, MaskedLM, PrefixLM, Seq2SeqLM

FAMILY_MODELS: dict[str, type[PretrainedModel]] = {
    "causal": CausalLM,
    "masked": MaskedLM,
    "prefix": PrefixLM,
    "seq2seq": Seq2SeqLM,
}

# the four families, the task heads and the model-level objectives
MODEL_CLASSES: dict[str, type[torch.nn.Module]] = {
    cls.__name__: cls
    for cls in (
        CausalLM,
        MaskedLM,
        PrefixLM,
        Seq2SeqLM,
        TransformerModel,
        SequenceClassifier,
        TokenClassifier,
        SpanQA,
        RewardModel,
        ElectraPretrainer,
        SpellingCorrector,
    )
}
# Model classes defined outside plmkit.model (PEFT wrappers, user models) register here.
_EXTRA_MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Make `load` able to rebuild `cls` (usable as a decorator); see `init_kwargs` for its arguments."""
    _EXTRA_MODEL_CLASSES[cls.__name__] = cls
    return cls


def model_classes() -> dict[str, type]:
    """Name -> class of every model `load` can rebuild from `plmkit.json`."""
    return {**MODEL_CLASSES, **_EXTRA_MODEL_CLASSES}


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
            raise CheckpointError(
                f"cannot save {type(model).__name__}: its constructor argument {name!r} is "
                f"not stored as model.{name}, so load could not rebuild it; store it or "
                "add an init_kwargs() method"
            )
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise CheckpointError(
            f"cannot save {type(model).__name__}: constructor arguments {sorted(kwargs)} "
            f"are not JSON values ({e}); add an init_kwargs() method"
        ) from e
    return kwargs


def model_class_name(model: torch.nn.Module) -> str:
    """The class name `load` rebuilds: FSDP2's `fully_shard` swaps a module's class for a subclass
    (FSDPCausalLM), whose name is not ours, so the first class that is not an FSDP one is taken; a
    pipeline stage (plmkit.model.stages) names the class it was cut from."""
    if getattr(model, "cut_from", None):
        return model.cut_from
    for cls in type(model).__mro__:
        if not any(base.__name__ == "FSDPModule" for base in cls.__mro__):
            return cls.__name__
    return type(model).__name__


def build_model(spec: str | ModelConfig, **overrides: Any) -> PretrainedModel:
    """The family language model for a preset name or a ModelConfig, with field overrides.

    >>> build_model("gpt2-small")                       # CausalLM, 124,439,808 parameters
    >>> build_model("gpt2-tiny", vocab_size=4096)       # a preset with a smaller vocabulary
    """
    config = get_preset(spec) if isinstance(spec, str) else spec
    if overrides:
        config = config.replace(**overrides)
    return FAMILY_MODELS[config.family](config)
