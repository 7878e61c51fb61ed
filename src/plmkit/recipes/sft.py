"""The supervised fine-tuning recipe (instruction tuning): `plm sft RECIPE.yaml [key=value ...] [--resume]
[--nproc N] [--overwrite]`.

Read it top to bottom. Rows in an instruction format (alpaca, sharegpt, openai, prompt_completion,
definition) become conversations (plmkit.prompting.instructions), the chat template renders each one and
marks what the assistant writes (plmkit.prompting.sft_data: labels on the answers and their end-of-turn /
EOS token, -100 elsewhere); the step is the engine's (plmkit.train.loop.train_step) with the causal LM
token loss on those labels as its loss:

    causal LM (init_from, or a preset from scratch) + its tokenizer + the chat template (saved with it)
    -> peft / quantize -> train and dev conversations -> examples (-> packed blocks with pack: true)
    for each step:  micro-batches of shuffled train examples -> (sum over assistant tokens, their count)
                    -> backward -> clip -> step -> log / dev loss per assistant token / checkpoint
    at the end:     the dev loss, the final checkpoint (its tokenizer carries the chat template), metrics.json

The tokenizer, the causal LM, the template and the examples are built by plmkit.recipes.sft_inputs; the
config is plmkit.recipes.sft_config.SftConfig. Padding is by position (a tokenizer whose pad is its eos
still learns to emit EOS); a tokenizer without a pad token pads with its eos. On several processes every
rank runs the same loop on its rows of each global micro-batch; the dev loss is computed on every rank
over the whole split and rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.config import to_dict
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import ConfigError, DataError
from plmkit.evaluate.loss import loss_metrics, stream_loss
from plmkit.files import atomic_file
from plmkit.model.losses import IGNORE
from plmkit.peft import apply_spec
from plmkit.prompting.chat import ChatTemplate
from plmkit.prompting.instructions import to_messages
from plmkit.recipes.common import check_resumable, fp32_master_weights, quantize_base
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.sft_config import SftConfig
from plmkit.recipes.sft_inputs import (
    SftSplit,
    build_causal_lm,
    collate,
    dev_batches,
    pad_id,
    read_sft_split,
    sft_template,
    sft_tokenizer,
    train_items,
)
from plmkit.recipes.validate import check_peft_section
from plmkit.train.checkpoint import load_training_state, read_trainer_info
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.build import build_strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, plot_loss_curve, truncate_metrics
from plmkit.train.loop import train_step
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap

MODEL = "model"  # the recipe's one model in the engine's dict of models
Batch = dict[str, torch.Tensor]


class SftLoss:
    """The engine's loss: the causal LM cross entropy summed over the assistant tokens, and their number.
    CausalLM shifts the labels itself (position t predicts token t+1), so a row's first label is never a
    target."""

    def count(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def __call__(self, models: Mapping[str, torch.nn.Module], batch: Batch) -> tuple[torch.Tensor, Any]:
        out = models[MODEL](**batch)
        return out.loss_sum, out.targets


@dataclass
class SftRun:
    config: SftConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    template: ChatTemplate
    splits: dict[str, SftSplit]  # train, and dev when given
    items: list[dict[str, list[int]]]  # what a training batch draws: examples, or packed blocks
    dev_batches: list[Batch]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: EpochBatches
    steps: int
    loss: SftLoss

    def train_state(self) -> TrainState:
        stateful = {"scaler": self.precision.scaler, "data": self.batches}
        return TrainState({MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, stateful)


# ---- checks before anything is written ------------------------------------------------------------
def validate(config: SftConfig) -> None:
    """ConfigError for what would fail once the run is under way (the data is read when the run builds)."""
    check_peft_section(config.peft)
    if not config.data.train:
        raise ConfigError(
            "the recipe has no data.train; set data.train=FILE (and data.dev=FILE for the dev loss)"
        )
    if not config.init_from and not config.model.preset:
        raise ConfigError(
            "the recipe names no base model; set init_from= to a plmkit or Hugging Face causal LM, or "
            "model.preset= with tokenizer.path= to start from a random initialisation"
        )
    if not config.init_from and not config.tokenizer.path:
        raise ConfigError("model.preset without init_from needs tokenizer.path= (a tokenizer folder)")
    if config.distributed.tensor_parallel != 1:
        raise ConfigError(
            f"distributed.tensor_parallel={config.distributed.tensor_parallel}: sft runs data parallel only "
            "(ddp, fsdp, deepspeed); set distributed.tensor_parallel=1"
        )
    if config.distributed.pipeline_parallel != 1:
        raise ConfigError(
            f"distributed.pipeline_parallel={config.distributed.pipeline_parallel}: sft runs data parallel "
            "only (ddp, fsdp, deepspeed); set distributed.pipeline_parallel=1"
        )
    if config.pack and config.peft.get("method") in ("prompt", "prefix"):
        raise ConfigError(
            f"pack=true with peft.method={config.peft['method']}: the virtual tokens sit outside the packed "
            "block-diagonal mask; set pack=false"
        )
    try:  # the format's options (sharegpt: role_map, response; ...): a ConfigError names the unknown one
        to_messages({}, config.data.format, where="data.format_options", **config.data.format_options)
    except DataError:
        pass  # the empty row itself, as expected
    if config.chat_template is not None and not str(config.chat_template).strip():
        raise ConfigError(
            "chat_template is empty; give a built-in name (chatml, qwen, llama3, plain), Jinja source, or null"
        )


def check(config: SftConfig) -> RunPlan:
    """The recipe and what this start may do with its run folder, before any process starts."""
    validate(config)
    return plan_run_folder(config)


# ---- building the run: tokenizer, model and template, data (plmkit.recipes.sft_inputs) -------------
def planned_steps(config: SftConfig, n_items: int, data_parallel: int) -> int:
    if config.epochs is None:
        return config.train.steps
    per_step = config.train.batch_size * config.train.accumulation * data_parallel
    return max(1, math.ceil(config.epochs * n_items / per_step))


def build_sft_run(config: SftConfig, strategy: Strategy, resume_from: Path | None) -> SftRun:
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)
    if not strategy.uses_grad_scaler():
        precision.scaler = torch.amp.GradScaler(device.type, enabled=False)

    tokenizer = sft_tokenizer(config, resume_from)
    model, _ = build_causal_lm(config, tokenizer)  # a base that is no causal LM fails first
    template = sft_template(config, tokenizer)
    tokenizer.chat_template = template.source  # saved with every checkpoint: chat renders as training did
    model = fp32_master_weights(model)
    model = quantize_base(config, model)  # QLoRA: the frozen base quantized under the peft method
    model = apply_spec(model, config.peft, tokenizer)
    if resume_from is not None:
        check_resumable(model, resume_from)
    model.to(device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)

    splits = {name: read_sft_split(config, name, tokenizer, template) for name in ("train", "dev")
              if getattr(config.data, name)}  # fmt: skip
    pad = pad_id(tokenizer)
    items = train_items(config, splits["train"].examples, pad)
    dev = dev_batches(config, splits["dev"], pad) if "dev" in splits else []

    global_batch = config.train.batch_size * strategy.data_parallel_size
    batches = EpochBatches(len(items), global_batch, seed=config.seed)
    steps = planned_steps(config, len(items), strategy.data_parallel_size)
    model = strategy.wrap(model)
    optimizer = strategy.make_optimizer(model, config.optim)
    strategy.seed_rank(config.seed)
    scheduler = build_scheduler(optimizer, steps, config.schedule)
    return SftRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, template, splits, items, dev, model,
        optimizer, scheduler, batches, steps, SftLoss(),
    )  # fmt: skip


# ---- one step, the dev loss, checkpoints ------------------------------------------------------------
def sft_step(run: SftRun) -> float:
    pad = pad_id(run.tokenizer)
    micro_batches = [
        collate(run.config, [run.items[i] for i in run.batches.next_indices()], pad)
        for _ in range(run.config.train.accumulation)
    ]
    return train_step(
        {MODEL: run.model},
        {MODEL: run.optimizer},
        {MODEL: run.scheduler},
        run.loss,  # loss_fn(models, batch) -> (sum over assistant tokens, count), with count(batch)
        micro_batches,
        run.strategy,
        run.precision,
        run.config.train.clip_grad,
    )


def dev_loss(run: SftRun) -> dict[str, float]:
    """{"loss", "perplexity"} per assistant token of the dev conversations."""
    total, count = stream_loss(
        run.model, run.dev_batches, device=run.strategy.device, autocast=run.precision.autocast
    )
    return loss_metrics(total, count)


def checkpoint(run: SftRun, step: int) -> Path:
    info = {"recipe": to_dict(run.config), "chat_template": run.template.name or "custom"}
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


# ---- the recipe ------------------------------------------------------------------------------------
def sft(config: SftConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final checkpoint and dev loss."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _sft(config, strategy, plan, stream)
    finally:
        strategy.close()


def _sft(config: SftConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_sft_run(config, strategy, plan.resume_from)
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
    has_dev = bool(run.dev_batches)
    if has_dev and step == 0:
        logger.log(0, {f"dev_{k}": v for k, v in dev_loss(run).items()})  # before any training
    run.model.train()
    logger.begin(step)
    bad_steps, last_log, started = 0, time.time(), time.time()
    while step < run.steps:
        loss = sft_step(run)
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
        if has_dev and (step == run.steps or (config.eval.every and step % config.eval.every == 0)):
            metrics.update({f"dev_{k}": v for k, v in dev_loss(run).items()})
        if metrics:
            logger.log(step, metrics)
        if config.checkpoint.every and step % config.checkpoint.every == 0 and step < run.steps:
            checkpoint(run, step)
    train_seconds = time.time() - started
    path = checkpoint(run, step)
    summary = {
        "step": step,
        "train_seconds": round(train_seconds, 2),
        "chat_template": run.template.name or "custom",
        "examples": {name: len(split.examples) for name, split in run.splits.items()},
        "skipped": {name: split.skipped.to_dict() for name, split in run.splits.items() if split.skipped},
        "dev": dev_loss(run) if has_dev else {},
    }
    if strategy.is_main:
        with atomic_file(run.run_dir / "metrics.json") as f:
            f.write((json.dumps(summary, indent=1) + "\n").encode())
    logger.close()
    if config.log.plot and strategy.is_main:
        plot = plot_loss_curve(run.run_dir)
        if plot:
            summary["loss_curve"] = str(plot)
    return {"checkpoint": str(path), **summary}


def resume(run: SftRun, checkpoint_path: Path) -> int:
    check_resumable(run.model, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    return int(info["step"])


def describe(run: SftRun) -> str:
    c = run.config
    model = unwrap(run.model)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    sizes = ", ".join(f"{name} {len(split.examples):,} conversations" for name, split in run.splits.items())
    skipped = [f"{name}: {split.skipped}" for name, split in run.splits.items() if split.skipped]
    items = f"{len(run.items):,} packed blocks of {c.data.max_length} tokens" if c.pack else "unpacked"
    epochs = run.steps * c.train.accumulation * c.train.batch_size * run.strategy.data_parallel_size
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"data: {c.data.format}; {sizes}" + (f" ({'; '.join(skipped)})" if skipped else "") + f"; {items}\n"
        f"chat template: {run.template.name or 'custom'}; max_length {c.data.max_length}; pad id "
        f"{pad_id(run.tokenizer)}, eos id {run.tokenizer.eos_id}\n"
        f"model: {type(model).__name__}, {n_params:,} parameters ({trained:,} trained)\n"
        f"train: {run.steps} steps x {c.train.accumulation} x {c.train.batch_size} "
        f"({epochs / len(run.items):.2f} epochs) on {run.strategy.device} in {run.precision.name}; lr {c.optim.lr}"
    )


__all__ = ["SftConfig", "SftLoss", "check", "sft", "validate"]
