"""The fine-tuning recipe: `plm finetune RECIPE.yaml [key=value ...] [--resume] [--nproc N]`.

Read it top to bottom. A task (plmkit.evaluate.tasks: classification, token_classification,
extractive_qa, seq2seq, spelling_correction) turns the data's rows into features and gives the loss and
the metrics; the step is the engine's (plmkit.train.loop.train_step) with the task as its loss:

    read the splits -> label set from train -> base model (init_from, or a preset from scratch) + a new
    task head -> peft / quantize -> features
    for each step:  micro-batches of shuffled train features -> task loss -> backward -> clip -> step
                    -> log / dev metrics (keep the best, stop early) / checkpoint
    at the end:     dev (and test) metrics of the best model, predictions.jsonl, metrics.json

On several processes every rank runs the same loop on its rows of each global micro-batch; evaluation
runs on every rank over the whole split (FSDP needs every rank in each forward) and rank 0 writes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.config import to_dict
from plmkit.data.tasks import LabelVocab, TaskSplit, read_split
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import CheckpointError, ConfigError
from plmkit.evaluate.tasks.base import MODEL, Feature, Task
from plmkit.evaluate.tasks.run import TaskResult, evaluate_split
from plmkit.files import atomic_file, atomic_folder
from plmkit.peft import apply_spec
from plmkit.recipes.common import check_resumable, fp32_master_weights, quantize_base
from plmkit.recipes.finetune_config import FinetuneConfig
from plmkit.recipes.finetune_model import build_base_model, finetune_tokenizer, task_model
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.tasks import NEEDS_UNLABELLED, UNLABELLED_TASKS, build_task, check_task_name
from plmkit.recipes.validate import check_peft_section
from plmkit.train.checkpoint import load_training_state, read_trainer_info
from plmkit.train.distributed.base import LAYOUT_PLAIN, Strategy
from plmkit.train.distributed.build import build_strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, plot_loss_curve, truncate_metrics
from plmkit.train.loop import train_step
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap


@dataclass
class BestMetric:
    """The best dev metric so far and how many evaluations have not beaten it (early stopping)."""

    metric: str
    mode: str = "max"
    value: float | None = None
    step: int = 0
    stale: int = 0  # evaluations since the best

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record an evaluation; True when it is the new best."""
        if self.metric not in metrics:
            raise ConfigError(
                f"early_stopping.metric={self.metric!r} is not a dev metric of this task; "
                f"choose one of {', '.join(sorted(metrics))}"
            )
        value = metrics[self.metric]
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better:
            self.value, self.step, self.stale = value, step, 0
        else:
            self.stale += 1
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.step, self.stale = state["value"], int(state["step"]), int(state["stale"])


@dataclass
class FinetuneRun:
    config: FinetuneConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    task: Task
    splits: dict[str, TaskSplit]  # train, and dev / test when given
    features: dict[str, list[Feature]]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: EpochBatches
    steps: int
    best: BestMetric
    started: dict[str, Any] = field(default_factory=dict)

    def train_state(self) -> TrainState:
        stateful = {"scaler": self.precision.scaler, "data": self.batches, "best": self.best}
        return TrainState({MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, stateful)


# ---- checks before anything is written ------------------------------------------------------------
def validate(config: FinetuneConfig) -> None:
    """ConfigError for what would fail once the run is under way (the data is read when the run builds)."""
    check_peft_section(config.peft)
    if not config.data.train:
        raise ConfigError(
            "the recipe has no data.train; set data.train=FILE (and data.dev=FILE for dev metrics)"
        )
    if not config.init_from and not config.model.preset:
        raise ConfigError(
            "the recipe names no base model; set init_from= to a plmkit or Hugging Face checkpoint, or "
            "model.preset= with tokenizer.path= to fine-tune from a random initialisation"
        )
    if not config.init_from and not config.tokenizer.path:
        raise ConfigError("model.preset without init_from needs tokenizer.path= (a tokenizer folder)")
    if config.distributed.tensor_parallel != 1:
        raise ConfigError(
            f"distributed.tensor_parallel={config.distributed.tensor_parallel}: fine-tuning runs data "
            "parallel only (ddp, fsdp, deepspeed); set distributed.tensor_parallel=1"
        )
    if config.distributed.pipeline_parallel != 1:
        raise ConfigError(
            f"distributed.pipeline_parallel={config.distributed.pipeline_parallel}: fine-tuning runs data parallel "
            "only (ddp, fsdp, deepspeed); set distributed.pipeline_parallel=1"
        )
    if config.early_stopping.patience and not config.data.dev:
        raise ConfigError("early_stopping.patience needs dev metrics: set data.dev=FILE or patience=0")
    check_task_name(config.task.name, training=True)
    if config.data.unlabelled and config.task.name not in UNLABELLED_TASKS:
        raise ConfigError(
            f"data.unlabelled is read by the tasks {', '.join(UNLABELLED_TASKS)} only, not by "
            f"task.name={config.task.name}; remove data.unlabelled"
        )
    if config.task.name in NEEDS_UNLABELLED and not config.data.unlabelled:
        raise ConfigError(
            f"task.name={config.task.name} trains on unlabelled texts; set data.unlabelled=FILE"
        )


def check(config: FinetuneConfig) -> RunPlan:
    """The recipe and what this start may do with its run folder, before any process starts."""
    validate(config)
    return plan_run_folder(config)


# ---- building the run ------------------------------------------------------------------------------
def read_splits(config: FinetuneConfig, task: Task) -> dict[str, TaskSplit]:
    required, optional, texts = task.columns()
    splits = {}
    for name in ("train", "dev", "test"):
        if getattr(config.data, name):
            splits[name] = read_split(config.data, name, required, optional, texts)
    if config.data.unlabelled:  # the task's columns but the label (one there is read and not used)
        needed = tuple(c for c in required if c != "label")
        splits["unlabelled"] = read_split(config.data, "unlabelled", needed, (*optional, "label"), texts)
    return splits


def planned_steps(config: FinetuneConfig, n_features: int, data_parallel: int) -> int:
    if config.epochs is None:
        return config.train.steps
    per_step = config.train.batch_size * config.train.accumulation * data_parallel
    return max(1, math.ceil(config.epochs * n_features / per_step))


def build_finetune_run(config: FinetuneConfig, strategy: Strategy, resume_from: Path | None) -> FinetuneRun:
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)
    if not strategy.uses_grad_scaler():
        precision.scaler = torch.amp.GradScaler(device.type, enabled=False)

    tokenizer = finetune_tokenizer(config, resume_from)
    probe = build_task(config.task, tokenizer)  # columns and label policy, before any label set exists
    splits = read_splits(config, probe)
    labels = probe.label_vocab(splits["train"])  # from the train split (dev labels must be in it)
    task = build_task(config.task, tokenizer, labels)
    task.prepare(splits)  # PET: the unlabelled texts; PET distillation: the soft labels

    base, source = build_base_model(config, tokenizer)
    model = task_model(task, base, source)  # the task head on the base's stack
    model = fp32_master_weights(model)
    model = quantize_base(config, model)  # QLoRA: the frozen base quantized under the peft method
    model = apply_spec(model, config.peft, tokenizer)
    if resume_from is not None:
        check_resumable(model, resume_from)
    model.to(device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    encoded = (
        "train",
        "dev",
        "test",
        task.train_split,
    )  # data.unlabelled: only PET distillation trains on it
    features = {name: task.features(split) for name, split in splits.items() if name in encoded}
    training = features[task.train_split]  # bad rows fail above
    global_batch = config.train.batch_size * strategy.data_parallel_size
    batches = EpochBatches(len(training), global_batch, seed=config.seed)
    steps = planned_steps(config, len(training), strategy.data_parallel_size)
    model = strategy.wrap(model)
    optimizer = strategy.make_optimizer(model, config.optim)
    strategy.seed_rank(config.seed)
    scheduler = build_scheduler(optimizer, steps, config.schedule)
    metric = config.early_stopping.metric or task.main_metric
    best = BestMetric(metric, config.early_stopping.mode)
    return FinetuneRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, task, splits, features, model,
        optimizer, scheduler, batches, steps, best,
    )  # fmt: skip


# ---- one step, evaluation, checkpoints --------------------------------------------------------------
def finetune_step(run: FinetuneRun) -> float:
    c = run.config
    features = run.features[run.task.train_split]
    micro_batches = [
        run.task.collate([features[i] for i in run.batches.next_indices()])
        for _ in range(c.train.accumulation)
    ]
    return train_step(
        {MODEL: run.model},
        {MODEL: run.optimizer},
        {MODEL: run.scheduler},
        run.task,  # loss_fn(models, batch) -> (sum, count), with count(batch)
        micro_batches,
        run.strategy,
        run.precision,
        c.train.clip_grad,
    )


def evaluate(run: FinetuneRun, split: str) -> TaskResult:
    return evaluate_split(
        run.task,
        run.model,
        run.splits[split],
        run.features[split],
        device=run.strategy.device,
        autocast=run.precision.autocast,
    )


def checkpoint(run: FinetuneRun, step: int) -> Path:
    info = {"recipe": to_dict(run.config), "best": run.best.state_dict(), "metric": run.best.metric}
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


def keep_best(run: FinetuneRun, step: int, metrics: dict[str, float]) -> None:
    """Copy this step's checkpoint (written now) to <run>/best, atomically."""
    path = checkpoint(run, step)
    if run.strategy.is_main:
        with atomic_folder(run.run_dir / "best") as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
            (tmp / "dev_metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=1) + "\n")
    run.strategy.barrier()


def restore_best(run: FinetuneRun) -> bool:
    """Load <run>/best into the model on every rank, through the strategy that wrote it (model.safetensors,
    FSDP's dcp/ shards, DeepSpeed's files); False (the final weights stay) when there is none of its layout."""
    best = run.run_dir / "best"
    if not (best / "trainer_state.json").is_file():
        return False
    saved, info = load_training_state(best)
    if info.get("distributed", {}).get("layout", LAYOUT_PLAIN) != run.strategy.layout:
        return False  # written before a resume changed the strategy
    kept = run.best.state_dict()
    # the optimizer, schedule and data order come back too: nothing uses them after training
    run.strategy.load(best, run.train_state(), saved, info)
    run.best.load_state_dict(kept)
    return True


def write_results(run: FinetuneRun, results: dict[str, TaskResult], summary: dict[str, Any]) -> None:
    """metrics.json and <split>_predictions.jsonl in the run folder, each written atomically."""
    files = {f"{split}_predictions.jsonl": result.records for split, result in results.items()}
    for name, records in {**files, **run.task.run_files()}.items():
        with atomic_file(run.run_dir / name) as f:
            for record in records:
                f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    with atomic_file(run.run_dir / "metrics.json") as f:
        f.write((json.dumps(summary, indent=1) + "\n").encode())


# ---- the recipe ------------------------------------------------------------------------------------
def finetune(config: FinetuneConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final metrics."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _finetune(config, strategy, plan, stream)
    finally:
        strategy.close()


def _finetune(config: FinetuneConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_finetune_run(config, strategy, plan.resume_from)
        step = 0
        if plan.resume_from is not None:
            step = resume(run, plan.resume_from)
    except BaseException:
        if strategy.is_main:
            discard_new_folder(plan)  # a new run that failed to start leaves no folder behind
        raise
    if strategy.is_main:
        record_recipe(plan, config, read_trainer_info(plan.resume_from) if plan.resume_from else {})
    strategy.barrier()
    logger = RunLogger(
        run.run_dir, run.steps, tensorboard=config.log.tensorboard, stream=stream, enabled=strategy.is_main
    )
    if strategy.is_main:
        truncate_metrics(run.run_dir / "metrics.jsonl", step)
    logger.print(describe(run))
    if step:
        logger.print(f"resumed from step {step} ({plan.resume_from})")
    has_dev = "dev" in run.splits
    run.model.train()
    logger.begin(step)
    bad_steps, last_log, started = 0, time.time(), time.time()
    stopped_early = False
    while step < run.steps and not stopped_early:
        loss = finetune_step(run)
        step += 1
        bad_steps = bad_steps + 1 if math.isnan(loss) else 0
        if bad_steps >= config.train.max_bad_steps:
            raise TrainingError(
                f"the loss was not finite for {bad_steps} steps in a row (step {step}); lower optim.lr, "
                "use train.precision=fp32 or check the data"
            )
        metrics: dict[str, Any] = {}
        if step % config.log.every == 0 or step == run.steps:
            now = time.time()
            metrics = {
                "loss": loss,
                "lr": run.scheduler.get_last_lr()[0],
                "epoch": round(run.batches.epochs, 3),
            }
            metrics["steps_per_s"] = config.log.every / max(now - last_log, 1e-9)
            last_log = now
        if has_dev and config.eval.every and step % config.eval.every == 0 and step < run.steps:
            dev = evaluate(run, "dev").metrics
            metrics.update({f"dev_{k}": v for k, v in dev.items()})
            if run.best.update(dev, step) and config.keep_best:
                keep_best(run, step, dev)
            patience = config.early_stopping.patience
            stopped_early = bool(patience) and run.best.stale >= patience
        if metrics:
            logger.log(step, metrics)
        if config.checkpoint.every and step % config.checkpoint.every == 0 and not stopped_early:
            checkpoint(run, step)
    train_seconds = time.time() - started
    if stopped_early:
        logger.print(
            f"stopped early at step {step}: dev {run.best.metric} has not improved for "
            f"{config.early_stopping.patience} evaluations (best {run.best.value:.4f} at step {run.best.step})"
        )
    results: dict[str, TaskResult] = {}
    final: dict[str, float] = {}
    if has_dev:
        results["dev"] = evaluate(run, "dev")
        final = results["dev"].metrics
        logger.log(step, {f"dev_{k}": v for k, v in final.items()})
        if run.best.update(final, step) and config.keep_best:
            keep_best(run, step, final)
    path = checkpoint(run, step)
    used_best = has_dev and config.keep_best and run.best.step != step and restore_best(run)
    for split in ("dev", "test"):
        if split in run.splits and (used_best or split not in results):
            results[split] = evaluate(run, split)  # the best model's (the final one's dev is known)
    summary = {
        "task": config.task.name,
        "step": step,
        "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 2),
        "best": {"metric": run.best.metric, "value": run.best.value, "step": run.best.step}
        if has_dev
        else None,
        "final_dev": final,
        "evaluated": "best" if used_best else "final",
        **{split: result.metrics for split, result in results.items()},
        **run.task.summary(),
    }
    if strategy.is_main:
        write_results(run, results, summary)
    logger.close()
    if config.log.plot and strategy.is_main:
        plot = plot_loss_curve(run.run_dir)
        if plot:
            summary["loss_curve"] = str(plot)
    return {"checkpoint": str(path), **summary}


def resume(run: FinetuneRun, checkpoint_path: Path) -> int:
    check_resumable(run.model, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    return int(info["step"])


def describe(run: FinetuneRun) -> str:
    c = run.config
    model = unwrap(run.model)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    sizes = ", ".join(f"{name} {len(split.rows):,} rows" for name, split in run.splits.items())
    skipped = [f"{name}: {split.skipped}" for name, split in run.splits.items() if split.skipped]
    labels = f"; {len(run.task.labels)} labels" if isinstance(run.task.labels, LabelVocab) else ""
    shares = run.strategy.data_parallel_size
    processes = f" x {shares} processes" if shares > 1 else ""
    distributed = run.strategy.describe()
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"task: {c.task.name}{labels}; data: {sizes}" + (f" ({'; '.join(skipped)})" if skipped else "") + "\n"
        f"model: {type(model).__name__}, {n_params:,} parameters ({trained:,} trained)\n"
        f"train: {run.steps} steps x {c.train.accumulation} x {c.train.batch_size} rows{processes} "
        f"({run.steps * c.train.accumulation * c.train.batch_size * shares / len(run.features[run.task.train_split]):.2f} "
        f"epochs of {run.task.train_split}) on {run.strategy.device} in {run.precision.name}; lr {c.optim.lr}"
        + (f"\n{distributed}" if distributed else "")
    )


__all__ = ["FinetuneConfig", "check", "finetune", "validate", "CheckpointError"]
