"""`plm evaluate CKPT --task NAME --data FILE`: a fine-tuned checkpoint's metrics on a data file, with
predictions.jsonl and metrics.json written atomically to an output folder.

The task settings and the data's column mapping default to those of the recipe that trained the
checkpoint (its trainer_state.json), so `plm evaluate runs/sst2/best --data dev.tsv` needs nothing else;
`task.x=...` / `data.columns.x=...` overrides change them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plmkit.config import from_dict, to_dict
from plmkit.config.convert import apply_overrides
from plmkit.data.tasks import LabelVocab, read_split
from plmkit.data.tasks.rows import TaskDataConfig
from plmkit.errors import ConfigError
from plmkit.evaluate.tasks.config import TaskConfig
from plmkit.evaluate.tasks.run import TaskResult, evaluate_split
from plmkit.files import check_output_folder, output_folder, read_json
from plmkit.recipes.finetune_model import check_max_length
from plmkit.recipes.tasks import FINETUNE_TASKS, build_task, check_task_name

DATA_KEYS = (
    "format",
    "columns",
    "on_error",
    "drop_labels",
)  # what a checkpoint's recipe lends the evaluation


@dataclass
class EvaluateConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: TaskDataConfig = field(default_factory=TaskDataConfig)  # data.test: the file evaluated


def trained_settings(checkpoint: Path) -> dict[str, Any]:
    """The task section and data mapping of the recipe that wrote `checkpoint` ({} when unknown)."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return {}
    recipe = read_json(state, "trainer state").get("recipe", {})
    if "task" not in recipe:
        return {}
    data = {k: v for k, v in recipe.get("data", {}).items() if k in DATA_KEYS}
    return {"task": dict(recipe["task"]), "data": data}


def evaluation_config(
    checkpoint: Path, task: str | None, data: str, overrides: Sequence[str] = ()
) -> EvaluateConfig:
    """The evaluation's settings: the checkpoint's recipe, then --task, --data and task.* / data.* overrides."""
    settings = trained_settings(checkpoint)
    if task is not None and settings.get("task", {}).get("name", task) != task:
        settings = {"data": settings.get("data", {})}  # another task: its settings do not apply
    settings.setdefault("task", {})
    settings.setdefault("data", {})
    if task is not None:
        settings["task"]["name"] = task
    if "name" not in settings["task"]:
        raise ConfigError(f"{checkpoint} does not say which task it was trained for; add --task NAME")
    settings["data"]["test"] = data
    return from_dict(EvaluateConfig, apply_overrides(settings, overrides, EvaluateConfig))


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    task: str | None = None,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    overwrite: bool = False,
    shots: Sequence[int] = (),
) -> tuple[TaskResult, Path]:
    """Evaluate `checkpoint` on `data`; returns the result and the folder written. `shots` (task icl):
    one evaluation per number of demonstrations, with accuracy_vs_shots.png (the last k's result returned)."""
    from plmkit.io import load

    checkpoint = Path(checkpoint)
    config = evaluation_config(checkpoint, task, data, overrides)
    out = Path(out) if out else checkpoint.parent / f"eval-{checkpoint.name}-{Path(data).stem}"
    check_output_folder(out, [checkpoint, data], overwrite, "--out")  # before any work
    check_task_name(config.task.name, training=False)
    if shots and config.task.name != "icl":
        raise ConfigError(f"--shots is for --task icl (in-context learning), not {config.task.name}")
    model, tokenizer = load(checkpoint)
    if tokenizer is None:
        raise ConfigError(f"{checkpoint} holds no tokenizer; evaluate a checkpoint saved with its tokenizer")
    names = getattr(model, "labels", None)
    labels = LabelVocab(list(names)) if names else None
    runs: dict[int | None, TaskResult] = {}
    split = None
    for k in shots or [None]:
        settings = (
            config.task if k is None else replace(config.task, options={**config.task.options, "shots": k})
        )
        task_obj = build_task(settings, tokenizer, labels, model=model, data=config.data)
        task_obj.check_model(model, str(checkpoint))
        if config.task.name in FINETUNE_TASKS:  # prompts of icl / cot are checked when built
            check_max_length(task_obj, model, str(checkpoint))
        if split is None:  # every k reads the same rows
            required, optional, texts = task_obj.columns()
            split = read_split(config.data, "test", required, optional, texts)
        runs[k] = evaluate_split(task_obj, model, split)
    result = runs[shots[-1] if shots else None]
    with output_folder(out, [checkpoint, data], overwrite, "--out") as tmp:
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
            for record in result.records:
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        summary = {"checkpoint": str(checkpoint), "data": data, "rows": len(split.rows), **result.metrics}
        if shots:
            summary["by_shots"] = {str(k): r.metrics for k, r in runs.items()}
            _plot_shots(runs, tmp / "accuracy_vs_shots.png")
        summary["settings"] = to_dict(config)
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return result, out


def _plot_shots(runs: dict[Any, TaskResult], path: Path) -> None:
    from plmkit.prompting.icl_task import plot_accuracy_vs_shots

    results = {
        "shots": list(runs),
        "accuracy": [r.metrics["accuracy"] for r in runs.values()],
        "macro_f1": [r.metrics.get("macro_f1") for r in runs.values()],
    }
    plot_accuracy_vs_shots(results, path)


def metrics_table(metrics: dict[str, Any]) -> str:
    """Two aligned columns, one metric per line (nested dicts flattened with dots)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", metrics)
    width = max((len(k) for k in flat), default=0)
    return "\n".join(
        f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in flat.items()
    )
