"""Check a whole recipe before anything is written, downloaded, trained or built.

`load_config(RecipeConfig, ...)` already checks every typed section (keys, types, Literal choices,
ranges). What depends on a choice is checked here: the objective's options against the objective's
dataclass (and `objective.options.model` against the model options it declares), the peft section
against the method's options dataclass, the model section as a whole (preset + fields -> a valid
ModelConfig), and that the objective trains the model family the recipe builds. Every error has the
format of plmkit.config.fields, so `plm pretrain recipe.yaml schedule.kind=cosin` or
`objective.options.mlm_probabilty=0.2` fails in the same words, and no run folder is left behind.

    config = load_config(RecipeConfig, path, overrides)
    validate(config)   # ConfigError naming the key and the closest valid one
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plmkit.config import check_fields, from_dict
from plmkit.config.fields import not_one_of
from plmkit.data.objectives import objective_class
from plmkit.errors import ConfigError
from plmkit.recipes.common import check_expert_parallel, check_objective_family, recipe_architecture
from plmkit.recipes.config import RecipeConfig


@dataclass
class _EveryMethod:
    train_head: bool | None = None  # also train a task head in full (None: True for task models)


def validate(config: RecipeConfig) -> None:
    """ConfigError for anything in `config` that would fail once the run is under way."""
    check_objective_options(config.objective.name, config.objective.options)
    check_peft_section(config.peft)
    check_model_family(config)
    check_pipeline(config)
    check_expert_parallel(config)  # experts to split, evenly (before any process starts)


def check_objective_options(name: str, options: dict[str, Any]) -> None:
    """`objective.options` against the objective's fields; `options.model` against its model options."""
    objective = objective_class(name)
    options = dict(options)
    model_options = options.pop("model", None) if objective.model_options is not None else None
    # tokenizer and seed come from the recipe (tokenizer section, seed), not from the options
    check_fields(objective, options, path="objective.options", exclude=("tokenizer", "seed"))
    if model_options is not None:
        from_dict(objective.model_options, model_options, path="objective.options.model")


def check_peft_section(section: dict[str, Any]) -> None:
    """The peft section ({method: lora, r: 8, ...}) against the method's options dataclass."""
    from plmkit.peft import METHOD_OPTIONS

    if not section:
        return
    if "method" not in section:
        raise ConfigError(
            f'missing required config key "peft.method": peft must be a mapping with a method (one of '
            f"{', '.join(METHOD_OPTIONS)}), e.g. {{method: lora, r: 8}}; or remove the section to train everything"
        )
    method = section["method"]
    if method not in METHOD_OPTIONS:
        raise not_one_of(method, METHOD_OPTIONS, "peft.method")
    options = {k: v for k, v in section.items() if k not in ("method", "train_head")}
    check_fields(_EveryMethod, {k: v for k, v in section.items() if k == "train_head"}, path="peft")
    parsed = from_dict(METHOD_OPTIONS[method], options, path="peft")
    if hasattr(parsed, "validate"):
        try:
            parsed.validate()  # the method's own checks (ranges, combinations)
        except ConfigError as error:
            raise ConfigError(f"peft: {error}") from None


def check_model_family(config: RecipeConfig) -> None:
    """The model section builds a valid ModelConfig of the family the objective trains."""
    architecture = recipe_architecture(config)  # ConfigError from ModelConfig's own checks
    if architecture is not None:  # None: a Hugging Face init_from, checked once loaded (check_family)
        check_objective_family(config.objective.name, architecture.family)


def check_pipeline(config: RecipeConfig) -> None:
    """distributed.pipeline_parallel against the model, objective, PEFT and micro-batch count (the number
    of processes: plmkit.train.distributed.build.strategy_name)."""
    from plmkit.model.stages import check_pipeline_parallel
    from plmkit.train.distributed.pipeline import check_pipeline_schedule

    d = config.distributed
    if d.pipeline_parallel == 1:
        return
    key = f"distributed.pipeline_parallel={d.pipeline_parallel}"
    if config.objective.name == "electra":
        raise ConfigError(
            f"{key} with objective electra: its generator and discriminator are two stacks in one model, "
            "which the pipeline does not cut; set distributed.pipeline_parallel=1"
        )
    if config.peft:
        raise ConfigError(
            f"{key} with peft.method={config.peft.get('method')!r}: pipeline stages train whole blocks; "
            "set distributed.pipeline_parallel=1 for PEFT"
        )
    if config.train.compile:
        raise ConfigError(
            f"{key} with train.compile=true: compile is not supported on pipeline stages; "
            "set train.compile=false"
        )
    architecture = recipe_architecture(config)
    if architecture is not None and architecture.n_experts is not None:
        raise ConfigError(
            f"{key} with model.n_experts={architecture.n_experts}: the router losses of a mixture of "
            "experts do not cross pipeline stages yet; set distributed.pipeline_parallel=1 (expert_parallel "
            "or fsdp split a mixture of experts)"
        )
    if architecture is not None:  # else (a Hugging Face init_from) the stage is checked when it is cut
        check_pipeline_parallel(architecture, d.pipeline_parallel)
    check_pipeline_schedule(d.pipeline_schedule, d.pipeline_parallel, config.train.accumulation)
