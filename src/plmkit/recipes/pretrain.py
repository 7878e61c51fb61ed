"""The pre-training recipe: `plm pretrain RECIPE.yaml [key=value ...]`.

Read it top to bottom. The builders (recipes/common.py) make the tokenizer, model, objective, data,
strategy, optimizer and schedule from the recipe; each step is the engine's (plmkit.train.loop.train_step)
with this recipe's loss (`PretrainLoss`: the model's token loss, with `count` for exact weighting):

    for each step:  micro-batches -> forward -> loss (weighted by target tokens) -> backward
                    -> clip -> optimizer step -> schedule -> log / evaluate / checkpoint

On several processes the same loop runs on every rank; the strategy (train/distributed/: ddp, fsdp,
deepspeed; fsdp with tensor parallelism) wraps the model, splits each global micro-batch into the
data-parallel ranks' rows (the ranks of a tensor-parallel group share theirs), synchronises gradients on
the last micro-batch, and writes checkpoints. Rank 0 logs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.config import to_dict
from plmkit.evaluate.loss import loss_metrics, stream_loss
from plmkit.model.moe_losses import RouterTally
from plmkit.recipes.common import MODEL, Run, build_recipe_strategy, build_run, restore_run
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.validate import validate
from plmkit.train.checkpoint import read_trainer_info
from plmkit.train.distributed.base import Strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, plot_loss_curve, truncate_metrics, warn
from plmkit.train.loop import train_step
from plmkit.weights import unwrap


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # input tokens consumed
    bad_steps: int = 0  # non-finite losses in a row
    skipped_steps: int = 0  # non-finite losses in total
    history: list[float] = field(default_factory=list)


def count_targets(model: torch.nn.Module, labels: torch.Tensor | None) -> int:
    """Target tokens the model's loss averages over (CausalLM shifts its labels by one)."""
    if labels is None:
        return 1
    if getattr(model, "shift_labels", False):
        labels = labels[:, 1:]
    return int((labels != -100).sum())


class PretrainLoss:
    """The recipe's loss_fn: the model's mean loss over its target tokens, times their number (the loop
    weights the sum). `count` gives the targets before any forward, so the loop weights exactly. A
    mixture of experts' loss includes its router losses (plmkit.model.moe_losses); `router` tallies its
    routing from the same forwards for the log."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.plain = unwrap(model)  # whether it shifts its labels
        self.router = RouterTally()

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return count_targets(self.plain, batch.get("labels"))

    def __call__(
        self, models: dict[str, torch.nn.Module], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        n = self.count(batch)
        out = models[MODEL](**batch)
        self.router.add(out)
        return out.loss * n, n  # n == 0 keeps it in the graph: the rank joins the reduction


def pretrain_step(
    run: Run, micro_batches: list[dict[str, torch.Tensor]], loss_fn: PretrainLoss | None = None
) -> float:
    """One optimizer step of the recipe (plmkit.train.loop.train_step); the mean loss per target token."""
    return train_step(
        {MODEL: run.model},
        {MODEL: run.optimizer},
        {MODEL: run.scheduler},
        loss_fn or PretrainLoss(run.model),
        micro_batches,
        run.strategy,
        run.precision,
        run.config.train.clip_grad,
    )


def evaluate(run: Run) -> dict[str, float]:
    """Validation loss and perplexity, streamed batch by batch (plmkit.evaluate.stream_loss)."""
    if run.val_batches is None:
        return {}
    strategy = run.strategy
    run.eval_objective.generator.manual_seed(run.config.seed + 1)  # same masks at every evaluation
    batches = (  # global batches: each rank takes its rows
        strategy.local_rows(run.eval_objective(blocks)) for blocks in run.val_batches(run.config.eval.batches)
    )
    # the strategy's loss of a batch: the model's (pipeline stages: the last stage's, 0 on the others)
    total, count = stream_loss(run.model, batches, strategy.token_loss, run.device, run.precision.autocast)
    total, count = strategy.sum_over_ranks(total, count)  # tensor parallel: both counted T times
    metrics = loss_metrics(total, int(count))
    if metrics and not math.isfinite(metrics["loss"]):  # never report nan as a result with exit 0
        raise TrainingError(
            f"the validation loss is {metrics['loss']}: the weights diverged; lower optim.lr, keep optim.eps "
            "near its default 1e-8 or use train.precision=fp32 (the checkpoints written so far are kept)"
        )
    return {"val_loss": metrics["loss"], "val_ppl": metrics["perplexity"]} if metrics else {}


def checkpoint(run: Run, progress: Progress) -> Path:
    info = {"tokens": progress.tokens, "skipped_steps": progress.skipped_steps, "recipe": to_dict(run.config)}
    return run.strategy.save(
        run.run_dir, progress.step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


def check(config: RecipeConfig) -> RunPlan:
    """Everything checkable before a process starts or a file is written: the recipe (validate) and
    what this start may do with its run folder (plmkit.recipes.runs)."""
    validate(config)
    return plan_run_folder(config)


def warn_about(config: RecipeConfig) -> None:
    """Settings that run, but probably not as the user thinks (printed once, by rank 0)."""
    if config.init_from and not config.tokenizer.path:  # (the model's keys: load_init_from warns)
        tokenizer = [k for k in ("kind", "vocab_size", "family") if k in _given(config.tokenizer)]
        if tokenizer:
            warn(
                f"init_from={config.init_from}: the tokenizer comes from that checkpoint, so the recipe's "
                f"{', '.join(f'tokenizer.{k}' for k in tokenizer)} are ignored; remove them (or init_from) "
                "to silence this"
            )
    if config.train.steps < config.schedule.warmup_steps:
        warn(
            f"train.steps={config.train.steps} is shorter than schedule.warmup_steps="
            f"{config.schedule.warmup_steps}: the learning rate never reaches optim.lr={config.optim.lr}; "
            "lower schedule.warmup_steps"
        )


def _given(section: Any) -> dict[str, Any]:
    """The fields of a dataclass section that differ from its defaults."""
    default = type(section)()
    return {k: v for k, v in vars(section).items() if getattr(default, k) != v}


def pretrain(config: RecipeConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final metrics."""
    plan = check(config)  # before any process group, file or tokenizer: every rank reads the same folder
    strategy = build_recipe_strategy(config)  # one process, or this process's place among torchrun's
    try:
        return _pretrain(config, strategy, plan, stream)
    finally:
        strategy.close()  # leave the process group, also after an error


def _pretrain(config: RecipeConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()  # every rank has read the run folder before rank 0 changes it
    if strategy.is_main:
        prepare_run_folder(plan)  # --overwrite: the old folder is moved aside, whole
        warn_about(config)
    try:
        run = build_run(config, strategy, plan.resume_from)  # checks the model against the checkpoint
        progress = Progress()
        info: dict[str, Any] = {}
        if plan.resume_from is not None:
            progress.step, progress.tokens, progress.skipped_steps = restore_run(run, plan.resume_from)
            info = read_trainer_info(plan.resume_from)
    except BaseException:
        if strategy.is_main:
            discard_new_folder(plan)  # a new run that failed to start leaves no folder behind
        raise
    resume_from = plan.resume_from
    if strategy.is_main:  # every check has passed: now the run folder changes
        record_recipe(plan, config, info)
    strategy.barrier()
    logger = RunLogger(
        run.run_dir,
        config.train.steps,
        tensorboard=config.log.tensorboard,
        stream=stream,
        enabled=strategy.is_main,
    )
    if strategy.is_main:
        truncate_metrics(run.run_dir / "metrics.jsonl", progress.step)
    logger.print(run.describe())
    if progress.step:
        logger.print(f"resumed from step {progress.step} ({resume_from})")

    first = evaluate(run) if progress.step == 0 else {}
    if first:
        logger.log(0, first)
    run.model.train()
    logger.begin(progress.step)
    last_log = time.time()
    tokens_at_log = progress.tokens
    loss_fn = PretrainLoss(run.model)
    while progress.step < config.train.steps:
        micro_batches = [run.objective(run.train_data.next_batch()) for _ in range(config.train.accumulation)]
        progress.tokens += sum(int(b["input_ids"].numel()) for b in micro_batches)
        loss = pretrain_step(run, micro_batches, loss_fn)
        progress.step += 1
        if math.isnan(loss):
            progress.bad_steps += 1
            progress.skipped_steps += 1
            if progress.bad_steps >= config.train.max_bad_steps:
                raise TrainingError(
                    f"the loss was not finite for {progress.bad_steps} steps in a row (step {progress.step}); "
                    "lower optim.lr, use train.precision=fp32 or check the data"
                )
        else:
            progress.bad_steps = 0
            progress.history.append(loss)
        metrics: dict[str, Any] = {}
        if progress.step % config.log.every == 0 or progress.step == config.train.steps:
            now = time.time()
            metrics = {
                "loss": loss,
                "lr": run.scheduler.get_last_lr()[0],
                "tokens": progress.tokens,
                "tokens_per_s": (progress.tokens - tokens_at_log) / max(now - last_log, 1e-9),
                "skipped_steps": progress.skipped_steps,
                # experts: tokens per expert, load-balance CV, dropped tokens since the last log
                **loss_fn.router.metrics(run.strategy.sum_over_ranks),
            }
            loss_fn.router.reset()
            last_log, tokens_at_log = now, progress.tokens
        if (
            config.eval.every
            and progress.step % config.eval.every == 0
            and progress.step < config.train.steps
        ):
            metrics.update(evaluate(run))
        if metrics:
            logger.log(progress.step, metrics)
        if config.checkpoint.every and progress.step % config.checkpoint.every == 0:
            checkpoint(run, progress)

    final = evaluate(run)
    if final:
        logger.log(progress.step, final)
    path = checkpoint(run, progress)
    logger.close()
    plot = plot_loss_curve(run.run_dir) if config.log.plot and strategy.is_main else None
    result = {"step": progress.step, "tokens": progress.tokens, "checkpoint": str(path), **final}
    if first:
        result["initial_val_loss"], result["initial_val_ppl"] = first["val_loss"], first["val_ppl"]
    if plot:
        result["loss_curve"] = str(plot)
    return result
