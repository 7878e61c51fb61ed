"""A reward model from any base: `as_reward_model` (plm reward, and PPO's critic and frozen RM), the
recipe's builder, and the reward statistics a checkpoint stores.

    rm = as_reward_model(plmkit.io.load("models/all-MiniLM-L6-v2")[0], "models/all-MiniLM-L6-v2")
    stats = reward_stats(checkpoint)    # {"mean", "std", "count", "split"} of the scores on the eval set

A RewardModel (plmkit.model.heads) reads one score at the last real token. A causal LM, a masked LM, a
prefix LM or a bare encoder gets a new score head on its stack; a RewardModel stays as it is; a one-label
SequenceClassifier keeps its body and its classifier row as the score head. A head of several outputs (a
classifier of N > 1 labels, a token tagger, span QA) is not a scalar reward: ConfigError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError
from plmkit.evaluate.tasks.base import with_body
from plmkit.model import ModelConfig, get_preset
from plmkit.model.heads import RewardModel
from plmkit.model.registry import model_class_name
from plmkit.recipes.inputs import load_init_from
from plmkit.train.checkpoint import read_trainer_info
from plmkit.weights import unwrap

REWARD = "RewardModel"
STATS_KEY = "reward_stats"  # trainer_state.json's field: the scores' mean / std on the eval set
NOT_SCALAR = {  # heads whose output is not one score per sequence
    "TokenClassifier": "a label per token",
    "SpanQA": "start and end logits per token",
    "ElectraPretrainer": "a generator and a discriminator",
    "SpellingCorrector": "a correction per character",
}


def as_reward_model(model: torch.nn.Module, source: str) -> RewardModel:
    """`model` as a RewardModel (see the module docstring); `source` names it in errors and warnings."""
    base = unwrap(model)
    name = model_class_name(base)
    if getattr(base, "peft_config", None) is not None:
        raise ConfigError(
            f"{source} is a PEFT checkpoint ({base.peft_config.method}); merge it into its base first "
            "(plm merge-lora) and start from the merged folder"
        )
    if name == REWARD:
        return base
    if name in NOT_SCALAR:
        raise ConfigError(
            f"{source} holds a {name} ({NOT_SCALAR[name]}), not a scalar reward head; start from a base LM or "
            "encoder (a new score head is put on its stack) or from a reward model checkpoint"
        )
    if name == "SequenceClassifier":
        if base.num_labels != 1:
            raise ConfigError(
                f"{source} holds a SequenceClassifier with {base.num_labels} outputs, not a scalar reward head; "
                "a reward model scores each sequence with one number: start from its base model, or from a "
                "one-label (regression) classifier or a reward model checkpoint"
            )
        head = with_body(RewardModel(base.config), base, source)
        with torch.no_grad():  # its regression row becomes the score head
            head.value_head.score.weight.copy_(base.classifier.weight)
            head.value_head.score.bias.copy_(base.classifier.bias)
        return head
    return with_body(RewardModel(base.config), base, source)


def build_reward_model(config: Any, tokenizer: Any) -> tuple[RewardModel, str]:
    """(the recipe's RewardModel in train mode, where it came from): init_from as a reward model, or
    model.preset at random initialisation (the vocabulary and special ids are the tokenizer's)."""
    if config.init_from:
        model = load_init_from(config)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(
                f"init_from {config.init_from} has vocab_size {model.config.vocab_size} but the tokenizer has "
                f"{tokenizer.vocab_size}; use the checkpoint's own tokenizer (leave tokenizer.path empty)"
            )
        model, source = (
            as_reward_model(model, f"init_from {config.init_from}"),
            f"init_from {config.init_from}",
        )
    else:
        fields = config.model.overrides()
        fields["vocab_size"] = fields.get("vocab_size", tokenizer.vocab_size)
        for role in ("pad", "bos", "eos"):
            fields.setdefault(f"{role}_token_id", getattr(tokenizer, f"{role}_id"))
        preset = get_preset(config.model.preset)
        fields.setdefault("max_positions", max(preset.max_positions, config.data.max_length))
        model_config: ModelConfig = preset.replace(**fields)
        if model_config.family == "seq2seq":
            raise ConfigError(
                f"model.preset={config.model.preset} builds an encoder-decoder; a reward model reads one stack: "
                "choose a causal or encoder preset (gpt2-tiny, llama-tiny, bert-tiny)"
            )
        model, source = RewardModel(model_config), f"model.preset={config.model.preset}"
    limit, position = model.config.max_positions, model.config.position
    if position in ("learned", "sinusoidal", "rotary") and config.data.max_length > limit:
        raise ConfigError(
            f"data.max_length={config.data.max_length} is longer than {source} can read "
            f"(max_positions={limit}); set data.max_length={limit} or less"
        )
    return model.train(), source


def is_causal(model: torch.nn.Module) -> bool:
    """Whether the model reads left to right (prompt + response with the response last) or is an encoder."""
    return getattr(unwrap(model).config, "family", "causal") == "causal"


def reward_stats(checkpoint: str | Path) -> dict[str, Any] | None:
    """The scores' {"mean", "std", "count", "split"} stored with a `plm reward` checkpoint (None if absent):
    PPO normalises the reward model's scores with them."""
    return read_trainer_info(Path(checkpoint)).get(STATS_KEY)
