"""PET end to end: `plm pet RECIPE.yaml [key=value ...] [--resume | --overwrite]` (Schick & Schütze 2021, as
their pet repo's `cli.py --method pet` runs it).

The recipe is a fine-tuning recipe with task pet (its patterns, verbalizer and training settings) plus
`repetitions` and a `distill` section; `data.unlabelled` is required:

    name: eprstmt-pet
    init_from: runs/bert-wwm-zh/checkpoints/step-00001000
    task: {name: pet, options: {patterns: ["{text}总之很{mask}。", "感觉很{mask}！{text}"],
                                verbalizer: {Positive: [好], Negative: [差]}}}
    data: {train: train_0.jsonl, dev: dev_0.jsonl, test: test_public.jsonl, unlabelled: unlabeled.jsonl}
    repetitions: 1                     # pattern models per pattern (seeds seed, seed+1, ...): PET's pet_repetitions
    distill: {temperature: 2.0, weights: train_accuracy, finetune: {train: {steps: 200}, optim: {lr: 1.0e-4}}}

Read it top to bottom:

    for each pattern p, each repetition r:   plm finetune with task pet, pattern p, seed seed+r
                                             -> <run>/pattern-<p>-seed-<seed+r>  (its auxiliary MLM on data.unlabelled)
    then:                                    plm finetune with task pet_distill over those models
                                             (prompting/pet_distill.py: the weighted ensemble's soft labels
                                             on data.unlabelled, a classifier trained on them), the recipe's
                                             settings with distill.finetune on top -> <run>/distilled
    at the end:                              <run>/pet.json: every run's dev / test metrics and the ensemble

Each step is a `plm finetune` run in its own folder, with that recipe's run-folder rules, one after the other
in one process (no --nproc). A new chain needs
an empty (or absent) <run>; --overwrite moves the whole folder aside first; --resume skips the runs that
finished (their metrics.json exists), resumes the one that was cut short and starts the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from plmkit.config import from_dict, to_dict
from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.files import atomic_file
from plmkit.recipes.finetune import finetune
from plmkit.recipes.finetune import validate as validate_finetune
from plmkit.recipes.finetune_config import FinetuneConfig
from plmkit.recipes.runs import RunFolderBusy, RunPlan, prepare_run_folder
from plmkit.train.checkpoint import latest_checkpoint

SUMMARY_FILE = "pet.json"


@dataclass
class DistillSection:
    temperature: Annotated[float, Range(gt=0)] = 2.0  # soft labels softmax(s / T) (PET: 2)
    weights: Literal["train_accuracy", "equal"] = "train_accuracy"  # each pattern model's weight
    # the classifier's run: recipe keys on top of this recipe's (e.g. {train: {steps: 200}, optim: {lr: 1e-4}})
    finetune: dict[str, Any] = field(default_factory=dict)


@dataclass
class PetRecipeConfig(FinetuneConfig):
    name: str = "pet"
    repetitions: Annotated[int, Range(ge=1)] = (
        1  # pattern models per pattern, seeds seed .. seed+repetitions-1
    )
    distill: DistillSection = field(default_factory=DistillSection)


# ---- the runs of the chain -------------------------------------------------------------------------------
def _finetune_fields(config: PetRecipeConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(FinetuneConfig)}


def pattern_runs(config: PetRecipeConfig) -> list[FinetuneConfig]:
    """One task-pet run per pattern and repetition, each in <run>/pattern-<p>-seed-<s>."""
    runs = []
    for pattern in range(len(config.task.options.get("patterns") or [])):
        for seed in range(config.seed, config.seed + config.repetitions):
            name = f"pattern-{pattern}-seed-{seed}"
            task = dataclasses.replace(config.task, options={**config.task.options, "pattern": pattern})
            fields = {**_finetune_fields(config), "name": name, "seed": seed, "task": task}
            runs.append(FinetuneConfig(**{**fields, "out_dir": str(Path(config.run_dir) / name)}))
    return runs


def distill_run(config: PetRecipeConfig, models: list[str]) -> FinetuneConfig:
    """The task-pet_distill run over `models`, in <run>/distilled, with distill.finetune on top."""
    recipe = to_dict(FinetuneConfig(**_finetune_fields(config)))
    task = {
        "name": "pet_distill",
        "max_length": config.task.max_length,
        "batch_size": config.task.batch_size,
        "options": {
            "models": models,
            "temperature": config.distill.temperature,
            "weights": config.distill.weights,
        },
    }
    recipe.update(name="distilled", out_dir=str(Path(config.run_dir) / "distilled"), task=task)
    return from_dict(FinetuneConfig, _merged(recipe, config.distill.finetune), path="distill.finetune")


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _started(run: FinetuneConfig, resume: bool) -> FinetuneConfig:
    """The run's resume / overwrite for this start of the chain (each run keeps its own folder rules)."""
    held = Path(run.run_dir).is_dir() and any(Path(run.run_dir).iterdir())
    return dataclasses.replace(run, resume=bool(resume and held), overwrite=False)


# ---- checks before anything is written -------------------------------------------------------------------
def validate(config: PetRecipeConfig) -> None:
    if config.task.name != "pet":
        raise ConfigError(
            f"plm pet trains one model per pattern with task pet; set task.name=pet (not {config.task.name})"
        )
    patterns = config.task.options.get("patterns")
    if not patterns or not isinstance(patterns, list):
        raise ConfigError('task.options.patterns: list the patterns, e.g. ["{text} It was {mask}."]')
    if "pattern" in config.task.options:
        raise ConfigError(
            "task.options.pattern: plm pet trains every pattern in turn; remove it "
            "(plm finetune with task.name=pet trains one)"
        )
    if not config.data.unlabelled:
        raise ConfigError("plm pet distils the pattern models on unlabelled texts; set data.unlabelled=FILE")
    if not config.init_from:
        raise ConfigError("plm pet starts every model from a pre-trained masked LM; set init_from=CHECKPOINT")
    for run in pattern_runs(config)[:1]:
        validate_finetune(run)
    validate_finetune(distill_run(config, ["<pattern models>"]))  # distill.finetune's keys, checked now


def check(config: PetRecipeConfig) -> RunPlan:
    validate(config)
    run_dir = Path(config.run_dir)
    if config.resume not in (False, True):
        raise ConfigError(
            f"plm pet --resume takes no checkpoint (got {config.resume}); --resume continues every run of "
            f"the chain in {run_dir}"
        )
    if config.resume and config.overwrite:
        raise ConfigError(
            f"--resume continues the runs in {run_dir} and --overwrite moves them aside; give one"
        )
    held = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if held and not config.resume and not config.overwrite:
        raise RunFolderBusy(run_dir, f"{', '.join(held[:4])}{' ...' if len(held) > 4 else ''}")
    return RunPlan(run_dir, new=not held, move_aside=bool(held and config.overwrite))


# ---- the recipe ------------------------------------------------------------------------------------------
def pet(config: PetRecipeConfig) -> dict[str, Any]:
    """Every pattern model, then the distilled classifier; returns (and writes to pet.json) their metrics."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "plm pet runs its fine-tuning runs one after the other in one process; drop --nproc "
            "(or run plm finetune --nproc N with task.name=pet per pattern, then task.name=pet_distill)"
        )
    plan = check(config)
    prepare_run_folder(plan)  # --overwrite: the whole chain's folder moves aside
    summary: dict[str, Any] = {"patterns": {}, "distilled": None}
    models = []
    for run in pattern_runs(config):
        result = _finished(run) or finetune(_started(run, bool(config.resume)))
        summary["patterns"][run.name] = _metrics(result)
        models.append(str(_model_of(run)))
    final = distill_run(config, models)
    result = _finished(final) or finetune(_started(final, bool(config.resume)))
    summary["distilled"] = _metrics(result)
    summary["pet_ensemble"] = result.get("pet_ensemble")
    with atomic_file(Path(config.run_dir) / SUMMARY_FILE) as f:
        f.write((json.dumps(summary, indent=1, ensure_ascii=False) + "\n").encode())
    return summary


def _finished(run: FinetuneConfig) -> dict[str, Any] | None:
    """A finished run's metrics.json (a --resume skips it), else None."""
    path = Path(run.run_dir) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _model_of(run: FinetuneConfig) -> Path:
    """The pattern model the ensemble reads: <run>/best (the best dev metric), else the last checkpoint."""
    best = Path(run.run_dir) / "best"
    if (best / "trainer_state.json").is_file():
        return best
    latest = latest_checkpoint(Path(run.run_dir))
    if latest is None:
        raise ConfigError(f"{run.run_dir} holds no checkpoint; run plm pet again with --resume")
    return latest


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("step", "best", "dev", "test") if k in result}
