"""The training jobs `plm` runs: one entry per recipe, from which the cli makes `plm NAME RECIPE.yaml
key=value --resume [CKPT] --nproc N`. A new recipe is a module with a config dataclass (which has a
`resume` field), a `validate(config)` that checks it whole before anything is written, and a
`run(config) -> dict` function, plus one entry in RECIPES.

The entries name their config class and run function as "module:attribute" strings, imported when the
recipe runs: importing this package (and so `plm --help`) loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Recipe:
    help: str  # one line, in `plm --help`
    description: str  # the paragraph of `plm NAME --help`
    config_class: str  # "module:Class", a dataclass read from the recipe YAML (plmkit.config.load_config)
    run: str  # "module:function", called as run(config) -> dict of results (printed as JSON)
    validate: str  # "module:function", validate(config) raises a ConfigError before any file is written

    def load_config_class(self) -> type:
        return _import(self.config_class)

    def load_run(self) -> Callable[[Any], dict[str, Any]]:
        return _import(self.run)

    def load_validate(self) -> Callable[[Any], None]:
        return _import(self.validate)


def _import(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


RECIPES: dict[str, Recipe] = {
    "pretrain": Recipe(
        help="pre-train any family with any objective from a YAML recipe",
        description="Pre-train from RECIPE.yaml (see recipes/): any family, any objective, PEFT and "
        "quantized bases, one or several processes.",
        config_class="plmkit.recipes.config:RecipeConfig",
        run="plmkit.recipes.pretrain:pretrain",
        validate="plmkit.recipes.pretrain:check",  # the recipe and its run folder
    ),
    "finetune": Recipe(
        help="fine-tune a checkpoint on a downstream task (classification, NER, QA, seq2seq, spelling)",
        description="Fine-tune from RECIPE.yaml (see recipes/*-finetune*.yaml): a task head on a plmkit or "
        "Hugging Face checkpoint (init_from), dev metrics during training, early stopping and the best "
        "checkpoint kept in <run>/best; PEFT and quantized bases as in pre-training.",
        config_class="plmkit.recipes.finetune_config:FinetuneConfig",
        run="plmkit.recipes.finetune:finetune",
        validate="plmkit.recipes.finetune:check",
    ),
    "pet": Recipe(
        help="PET: one masked-LM model per pattern, then their ensemble distilled into a classifier",
        description="Pattern-exploiting training from RECIPE.yaml (a fine-tuning recipe with task pet, "
        "data.unlabelled, repetitions and a distill section): a plm finetune run with task pet for every "
        "pattern and repetition, then a sequence classifier trained on the soft labels of their "
        "train-accuracy-weighted ensemble on the unlabelled texts (task pet_distill); pet.json sums up.",
        config_class="plmkit.recipes.pet:PetRecipeConfig",
        run="plmkit.recipes.pet:pet",
        validate="plmkit.recipes.pet:check",
    ),
    "sft": Recipe(
        help="supervised fine-tuning (instruction tuning) of a causal LM on chat / instruction data",
        description="Instruction-tune a causal LM from RECIPE.yaml (see recipes/sft/*.yaml): rows in an "
        "instruction format (alpaca, sharegpt, openai, prompt_completion, definition) rendered by a chat "
        "template (saved with the checkpoint's tokenizer), the loss on the assistant's tokens and their "
        "end-of-turn / EOS token only, optional packing, the dev loss per assistant token; PEFT and "
        "quantized bases as in pre-training.",
        config_class="plmkit.recipes.sft_config:SftConfig",
        run="plmkit.recipes.sft:sft",
        validate="plmkit.recipes.sft:check",
    ),
    "grpo": Recipe(
        help="GRPO: reinforcement learning of a causal LM from reward functions on groups of sampled completions",
        description="Train a causal LM with group relative policy optimization from RECIPE.yaml (see "
        "recipes/grpo/*.yaml): num_generations sampled completions per prompt, rewards from built-in "
        "verifiers (gsm8k_strict, gsm8k_flexible, arithmetic) or Python functions (module:function), "
        "advantages relative to the group, the clipped ratio loss (grpo, bnpo, dr_grpo, dapo) with an "
        "optional k3 KL to a frozen reference (beta), num_iterations steps per generation batch, and the "
        "mean reward of greedy completions of dev prompts.",
        config_class="plmkit.recipes.grpo_config:GrpoConfig",
        run="plmkit.recipes.grpo:grpo",
        validate="plmkit.recipes.grpo:check",
    ),
    "ppo": Recipe(
        help="PPO with the pre-training mix (InstructGPT's PPO-ptx): RLHF of an SFT model against a reward model",
        description="Train an SFT causal LM with PPO from RECIPE.yaml (see recipes/ppo/*.yaml): completions "
        "sampled with the KV cache, the reward model's score (normalised, clipped, a missing-EOS penalty) "
        "minus a per-token KL to the frozen SFT model (k1 or k3, fixed or adaptive coefficient), GAE "
        "advantages, clipped policy and value losses over ppo.epochs of mini-batches, and ptx.coef x the "
        "pre-training NLL in the same optimizer step; a critic from the reward model; optional LoRA actor "
        "and critic on one shared base (reference = adapters off) and an EMA of the actor.",
        config_class="plmkit.recipes.ppo_config:PpoConfig",
        run="plmkit.recipes.ppo:ppo",
        validate="plmkit.recipes.ppo:check",
    ),
    "reward": Recipe(
        help="train a reward model on preference pairs or K-way rankings (Bradley-Terry)",
        description="Train a reward model from RECIPE.yaml (see recipes/reward/*.yaml): a scalar score at the "
        "last real token of any causal or encoder base (init_from) or a preset; chosen / rejected rows (plain, "
        "chat, HH-RLHF transcripts, ShareGPT) or K-way rankings; optional margin and reward centering; dev pair "
        "accuracy, and the reward mean / std stored with every checkpoint; PEFT and quantized bases.",
        config_class="plmkit.recipes.reward_config:RewardConfig",
        run="plmkit.recipes.reward:reward",
        validate="plmkit.recipes.reward:check",
    ),
    "dpo": Recipe(
        help="direct preference optimization of a causal LM (DPO sigmoid / hinge / IPO, RPO)",
        description="Align a causal LM on preference pairs from RECIPE.yaml (see recipes/dpo/*.yaml): DPO with "
        "the sigmoid, hinge or IPO loss, beta, label smoothing and an optional NLL term on the chosen response "
        "(rpo_alpha); the reference is a frozen copy of the initial policy, the base under LoRA (adapters off), "
        "or its log-probs precomputed once (precompute_reference); logs rewards, accuracies, margins, log-probs.",
        config_class="plmkit.recipes.dpo_config:DpoConfig",
        run="plmkit.recipes.dpo:dpo",
        validate="plmkit.recipes.dpo:check",
    ),
    "rlhf-demo": Recipe(
        help="the ChatGPT pipeline on a CPU: pretrain -> SFT -> reward model -> PPO with PTX on additions",
        description="Run RECIPE.yaml (recipes/rlhf/demo.yaml, `make rlhf`): a synthetic verifiable task "
        "(two-digit additions), a small GPT pre-trained on equations and text, SFT, a reward model on "
        "verifier-labelled pairs, then PPO with the pre-training mix; writes <run>/rlhf.png (reward, "
        "verifier accuracy, KL, pre-training loss per PPO step) and prints accuracy and KL start -> end.",
        config_class="plmkit.recipes.rlhf_demo:RlhfDemoConfig",
        run="plmkit.recipes.rlhf_demo:rlhf_demo",
        validate="plmkit.recipes.rlhf_demo:check",
    ),
}
