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
}
