"""The PPO recipe's models and data: actor, critic, reference and reward model; the pre-training blocks of
the PTX term. (Prompts are read as plm grpo reads them: plmkit.recipes.grpo_inputs.)

Full fine-tuning: the actor is the SFT model (init_from), the reference a frozen second copy of it, the
reward model plm reward's checkpoint (frozen) and the critic a trained copy of the reward model (or of
critic_from): a RewardModel reads a value per token from the same head that scores a sequence.

`peft:` (lora / adapter): one frozen base holds every model. The actor is the SFT model with adapters; the
critic is a RewardModel whose body shares the base's frozen tensors (no copy) with its own adapters and the
reward model's value head; the reference is the actor with its adapters switched off (adapters_off); the
reward model's frozen tensors that equal the base's are replaced by the base's (a reward model trained
with LoRA on the SFT model then costs only its adapters).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.data import PretrainingData, build_pretraining_data
from plmkit.errors import CheckpointError, ConfigError
from plmkit.model.registry import model_class_name
from plmkit.peft import apply_spec
from plmkit.recipes.common import fp32_master_weights
from plmkit.recipes.grpo_inputs import build_policy, build_reference
from plmkit.recipes.ppo_config import PpoConfig
from plmkit.weights import unwrap

REWARD_MODEL = "RewardModel"
SWITCHABLE = ("lora", "adapter")  # PEFT methods whose base is the model with its adapters switched off


@dataclass
class PpoModels:
    actor: nn.Module  # trained
    critic: nn.Module  # trained: a RewardModel; its per-token values are the value estimates
    reference: nn.Module | None  # frozen; None: the actor with its adapters off (peft)
    reward: nn.Module  # frozen RewardModel
    reward_mean: float  # the reward model's score statistics (normalisation); 0 / 1 when unknown
    reward_std: float


# ---- the reward model ------------------------------------------------------------------------------
def load_reward_model(path: str, key: str, tokenizer: Any) -> nn.Module:
    """A RewardModel checkpoint (plm reward), in eval mode and fp32. ConfigError for a model whose head
    is not a scalar score, a non-causal body where a causal one is needed, or another tokenizer."""
    from plmkit.io import load

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{key}={path} does not exist; train one with plm reward and point {key}= at it"
        )
    model, _ = load(folder)
    name = model_class_name(unwrap(getattr(model, "base_model", model)))
    if name != REWARD_MODEL:
        raise ConfigError(
            f"{key}={path} holds a {name}, not a reward model with a scalar head; train one with plm reward "
            "(a RewardModel: one score per sequence, one value per token)"
        )
    check_same_vocabulary(tokenizer, folder, key)
    return fp32_master_weights(model)


def check_same_vocabulary(tokenizer: Any, folder: Path, key: str) -> None:
    """The checkpoint's tokenizer is the policy's: its completions are scored as token ids, unconverted."""
    from plmkit.recipes.inputs import load_tokenizer_folder

    try:
        theirs = load_tokenizer_folder(folder)
    except Exception:  # a checkpoint without a tokenizer folder: nothing to compare
        return
    if theirs.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(
            f"{key}={folder} was trained with another tokenizer ({theirs.vocab_size} tokens) than the policy "
            f"({tokenizer.vocab_size} tokens); PPO scores the policy's token ids as they are: train the "
            "reward model from the SFT model (plm reward init_from=...) or with its tokenizer"
        )


def reward_statistics(path: str) -> tuple[float, float] | None:
    """(mean, std) of the reward model's scores on its eval set as plm reward stores them with every
    checkpoint (plmkit.recipes.reward_model.reward_stats), or None (a folder without them warns)."""
    from plmkit.recipes.reward_model import reward_stats
    from plmkit.train.logging import warn

    stats = reward_stats(path) if (Path(path) / "trainer_state.json").is_file() else None
    if not stats or not stats.get("std"):
        warn(
            f"reward_model={path} stores no score mean / std (plm reward writes them); scores are not normalised"
        )
        return None
    return float(stats["mean"]), float(stats["std"])


# ---- sharing one frozen base -------------------------------------------------------------------------
def shared_copy(module: nn.Module) -> nn.Module:
    """A second module tree whose parameters and buffers ARE `module`'s (the same tensors, no copy):
    adapters applied to one tree do not touch the other, the frozen weights exist once."""
    memo = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo)


def share_frozen_weights(model: nn.Module, base: nn.Module) -> int:
    """Replace every frozen parameter of `model` that equals `base`'s parameter of the same name by that
    parameter (one tensor in memory); returns how many were shared."""
    theirs = dict(base.named_parameters())
    shared = 0
    for name, p in list(model.named_parameters()):
        q = theirs.get(name)
        if p.requires_grad or q is None or q is p or q.shape != p.shape or not torch.equal(p, q):
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, attr, q)
        shared += 1
    return shared


def _check_peft(config: PpoConfig) -> None:
    method = config.peft.get("method")
    if config.peft and method not in SWITCHABLE:
        raise ConfigError(
            f"peft.method={method}: PPO's shared base needs a method whose base returns when its modules are "
            f"switched off ({' or '.join(SWITCHABLE)}); use peft.method=lora"
        )


# ---- the four models ---------------------------------------------------------------------------------
def build_models(config: PpoConfig, tokenizer: Any) -> PpoModels:
    """Actor, critic, reference and reward model (see the module docstring), the trained ones in train mode."""
    _check_peft(config)
    if not config.reward_model:
        raise ConfigError("the recipe has no reward_model; set reward_model= to a plm reward checkpoint")
    reward = load_reward_model(config.reward_model, "reward_model", tokenizer).requires_grad_(False).eval()
    stats = reward_statistics(config.reward_model) if config.ppo.normalize_reward else None
    mean, std = stats or (0.0, 1.0)
    actor = fp32_master_weights(build_policy(config, tokenizer))
    critic_source = config.critic_from or config.reward_model
    critic_key = "critic_from" if config.critic_from else "reward_model"
    if not config.peft:
        critic = load_reward_model(critic_source, critic_key, tokenizer)
        _check_causal(critic, critic_key, critic_source)
        reference = build_reference(config, tokenizer)
        return PpoModels(actor.train(), critic.train(), fp32_master_weights(reference), reward, mean, std)
    # one frozen base: the critic's body shares the actor's tensors before either gets its adapters
    from plmkit.model.heads import RewardModel

    head_source = load_reward_model(critic_source, critic_key, tokenizer) if config.critic_from else reward
    base = unwrap(actor)
    critic = RewardModel(base.config)
    critic.transformer = shared_copy(base.transformer)
    critic.value_head.load_state_dict(unwrap(head_source).value_head.state_dict())  # a copy: trained apart
    actor = apply_spec(actor, config.peft, tokenizer)
    critic = apply_spec(critic, {**config.peft, "train_head": True}, tokenizer, where="peft (critic)")
    share_frozen_weights(reward, critic)  # the reward model's body, where it is the SFT model's
    return PpoModels(actor.train(), critic.train(), None, reward, mean, std)


def _check_causal(critic: nn.Module, key: str, path: str) -> None:
    family = unwrap(critic).config.family
    if family != "causal":
        raise ConfigError(
            f"{key}={path} is a {family} reward model: its value at a token would see the tokens after it; "
            "the critic needs a causal body (train the reward model from the SFT model), or set critic_from= "
            "to a causal RewardModel"
        )


# ---- the pre-training mix ------------------------------------------------------------------------------
def build_ptx_data(config: PpoConfig, tokenizer: Any) -> PretrainingData | None:
    """ptx.data's blocks (batches of ptx.batch_size) and its validation blocks, or None without sources."""
    d = config.ptx.data
    if not d.sources:
        if config.ptx.coef:
            raise ConfigError(
                f"ptx.coef={config.ptx.coef} but ptx.data has no sources; set ptx.data.sources=[{{path: FILE}}] "
                "(pre-training text) or ptx.coef=0"
            )
        return None
    return build_pretraining_data(
        d.sources,
        tokenizer,
        d.block_size,
        config.ptx.batch_size,
        seed=config.seed,
        cache_dir=d.cache_dir,
        validation=d.validation or (),
        validation_fraction=d.validation_fraction,
    )


def ptx_batch(blocks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pre-training blocks (full, unpadded) as a causal LM batch: every token is a label."""
    input_ids = torch.stack(blocks)  # (B, L)
    return {"input_ids": input_ids, "labels": input_ids.clone()}
