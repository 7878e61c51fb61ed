"""The reward-model recipe: `plm reward RECIPE.yaml [key=value ...] [--resume] [--nproc N] [--overwrite]`.

Read it top to bottom. Preference rows (plmkit.prompting.preferences: pairs, HH transcripts, ShareGPT
preference rows, K-way rankings) become a prompt and its responses, best first, each tokenized as the
model reads it; the step is the engine's (plmkit.train.loop.train_step) with the Bradley-Terry loss:

    RewardModel (a score head on init_from's stack, a reward model checkpoint, or a preset) + its tokenizer
    -> peft / quantize -> train and dev preferences (prompt + response tokens per response)
    for each step:  micro-batches of shuffled train preferences -> the scores of all their responses
                    -> per pair -log σ(r_better - r_worse - margin) (+ centering), averaged per preference
                    -> (sum over preferences, their number) -> backward -> clip -> step -> log / dev / checkpoint
    at the end:     dev pair accuracy, the reward mean / std (stored with every checkpoint), metrics.json

A batch element is one preference: a pair, or a ranking of K responses whose C(K,2) pairs are averaged
(InstructGPT), so a step's loss is the mean over its preferences. The config is
plmkit.recipes.reward_config.RewardConfig; the model builder plmkit.recipes.reward_model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.align.reward import pair_accuracy, ranking_pairs, reward_pair_loss
from plmkit.config import to_dict
from plmkit.data.tasks.batches import EpochBatches
from plmkit.files import atomic_file
from plmkit.model.dropout import dropout_off
from plmkit.peft import apply_spec
from plmkit.prompting.preferences import collate_responses
from plmkit.recipes.common import check_resumable, fp32_master_weights, quantize_base
from plmkit.recipes.preference_data import Encoding, PreferenceExample, PreferenceSplit, read_preference_split
from plmkit.recipes.preference_run import (
    pad_id,
    planned_steps,
    preference_encoding,
    run_precision,
    template_name,
    validate_preference_recipe,
)
from plmkit.recipes.reward_config import RewardConfig
from plmkit.recipes.reward_model import STATS_KEY, build_reward_model, is_causal
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.sft_inputs import sft_tokenizer
from plmkit.train.checkpoint import load_training_state, read_trainer_info
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.build import build_strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, plot_loss_curve, truncate_metrics
from plmkit.train.loop import train_step
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap

MODEL = "model"  # the recipe's one model in the engine's dict of models
Batch = dict[str, torch.Tensor]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---- batches and the loss ---------------------------------------------------------------------------
def collate_preferences(examples: list[PreferenceExample], pad: int) -> Batch:
    """Preferences -> input_ids, attention_mask (+ token_type_ids) (G, K, T): response k of preference g
    (K the most responses of any; missing ones all padding), n_responses (G,), margin (G,) (0 if none)."""
    k = max(len(e.responses) for e in examples)
    flat = collate_responses([r for e in examples for r in e.responses], pad)  # (N, T)
    t = flat["input_ids"].shape[1]
    batch = {key: torch.zeros(len(examples), k, t, dtype=torch.long) for key in INPUTS if key in flat}
    batch["input_ids"].fill_(pad)
    row = 0
    for g, e in enumerate(examples):
        for i in range(len(e.responses)):
            for key in batch:
                batch[key][g, i] = flat[key][row]
            row += 1
    batch["n_responses"] = torch.tensor([len(e.responses) for e in examples])
    batch["margin"] = torch.tensor([e.margin or 0.0 for e in examples], dtype=torch.float32)
    return batch


def response_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The scores (N,) of the batch's real responses, preference by preference, best first."""
    n = batch["n_responses"]
    real = torch.arange(batch["input_ids"].shape[1], device=n.device)[None, :] < n[:, None]  # (G, K)
    inputs = {key: batch[key][real] for key in INPUTS if key in batch}  # (N, T)
    longest = int(inputs["attention_mask"].sum(-1).max())  # this micro-batch's rows may be shorter
    inputs = {key: value[:, :longest] for key, value in inputs.items()}
    return model(**inputs).scores.float()


def preference_pairs(n_responses: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(better (P,), worse (P,), preference of each pair (P,), pairs per preference (G,)): indices into
    the flat scores of every (better, worse) pair of every preference's ranking."""
    better, worse, owner, counts, offset = [], [], [], [], 0
    for g, k in enumerate(n_responses):
        pairs = ranking_pairs(k)
        better += [offset + i for i, _ in pairs]
        worse += [offset + j for _, j in pairs]
        owner += [g] * len(pairs)
        counts.append(len(pairs))
        offset += k
    return tuple(torch.tensor(x, device=device) for x in (better, worse, owner, counts))


@dataclass
class RewardStats:
    """Sums over the pairs a loss has seen since the last `take()` (the step's, or an evaluation's)."""

    pairs: int = 0
    correct: float = 0.0
    margin: float = 0.0  # sum of r_better - r_worse
    scores: list[torch.Tensor] = field(default_factory=list)

    def take(self) -> dict[str, float]:
        out = {"accuracy": self.correct / max(self.pairs, 1), "margin": self.margin / max(self.pairs, 1)}
        if self.scores:
            scores = torch.cat(self.scores)
            out.update(reward_mean=float(scores.mean()), reward_std=float(scores.std(unbiased=False)))
            out["responses"] = int(scores.numel())
        self.pairs, self.correct, self.margin, self.scores = 0, 0.0, 0.0, []
        return out


class RewardLoss:
    """The engine's loss: per preference, the mean over its pairs of -log σ(r_better - r_worse - margin)
    (+ center_coef (r_better + r_worse)²); (its sum over the batch's preferences, their number)."""

    def __init__(self, center_coef: float = 0.0, keep_scores: bool = False) -> None:
        self.center_coef, self.keep_scores = center_coef, keep_scores
        self.stats = RewardStats()

    def count(self, batch: Batch) -> int:
        return int(batch["n_responses"].shape[0])

    def __call__(self, models: Mapping[str, torch.nn.Module], batch: Batch) -> tuple[torch.Tensor, Any]:
        scores = response_scores(models[MODEL], batch)  # (N,)
        better, worse, owner, counts = preference_pairs(batch["n_responses"].tolist(), scores.device)
        margin = batch["margin"].to(scores.device)[owner]  # (P,)
        losses = reward_pair_loss(scores[better], scores[worse], margin=margin, center_coef=self.center_coef)
        per_preference = torch.zeros(len(counts), device=scores.device).index_add(0, owner, losses) / counts
        with torch.no_grad():
            self.stats.pairs += len(better)
            self.stats.correct += float(pair_accuracy(scores[better], scores[worse])) * len(better)
            self.stats.margin += float((scores[better] - scores[worse]).sum())
            if self.keep_scores:
                self.stats.scores.append(scores.detach().cpu())
        return per_preference.sum(), len(counts)


# ---- the run --------------------------------------------------------------------------------------
@dataclass
class RewardRun:
    config: RewardConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    encoding: Encoding
    splits: dict[str, PreferenceSplit]  # train, and dev when given
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: EpochBatches
    steps: int
    loss: RewardLoss
    stats: dict[str, Any] | None = None  # the reward mean / std of the last evaluation

    def train_state(self) -> TrainState:
        stateful = {"scaler": self.precision.scaler, "data": self.batches}
        return TrainState({MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, stateful)


def validate(config: RewardConfig) -> None:
    validate_preference_recipe(config, "plm reward")


def check(config: RewardConfig) -> RunPlan:
    """The recipe and what this start may do with its run folder, before any process starts."""
    validate(config)
    return plan_run_folder(config)


def build_reward_run(config: RewardConfig, strategy: Strategy, resume_from: Path | None) -> RewardRun:
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    precision = run_precision(config, strategy)
    tokenizer = sft_tokenizer(config, resume_from)  # tokenizer.path, init_from's, or the checkpoint's
    model, _ = build_reward_model(config, tokenizer)  # a head that is not a scalar fails first
    encoding = preference_encoding(config, tokenizer, is_causal(model))
    if encoding.template is not None:  # saved with every checkpoint: PPO renders as the RM was trained
        tokenizer.chat_template = encoding.template.source
    model = fp32_master_weights(model)
    model = quantize_base(config, model)
    model = apply_spec(model, config.peft, tokenizer)
    if resume_from is not None:
        check_resumable(model, resume_from)
    model.to(strategy.device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)

    splits = {
        name: read_preference_split(config.data, name, encoding, margin=True)
        for name in ("train", "dev")
        if getattr(config.data, name)
    }
    n_train = len(splits["train"].examples)
    batches = EpochBatches(n_train, config.train.batch_size * strategy.data_parallel_size, seed=config.seed)
    steps = planned_steps(config, n_train, strategy.data_parallel_size)
    model = strategy.wrap(model)
    optimizer = strategy.make_optimizer(model, config.optim)
    strategy.seed_rank(config.seed)
    scheduler = build_scheduler(optimizer, steps, config.schedule)
    return RewardRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, encoding, splits, model, optimizer,
        scheduler, batches, steps, RewardLoss(config.center_coef),
    )  # fmt: skip


def reward_step(run: RewardRun) -> float:
    pad = pad_id(run.tokenizer)
    examples = run.splits["train"].examples
    micro_batches = [
        collate_preferences([examples[i] for i in run.batches.next_indices()], pad)
        for _ in range(run.config.train.accumulation)
    ]
    return train_step(
        {MODEL: run.model},
        {MODEL: run.optimizer},
        {MODEL: run.scheduler},
        run.loss,  # loss_fn(models, batch) -> (sum over preferences, their number), with count(batch)
        micro_batches,
        run.strategy,
        run.precision,
        run.config.train.clip_grad,
    )


@torch.no_grad()
def evaluate_split(run: RewardRun, split: str) -> dict[str, Any]:
    """{"loss", "accuracy" (pairs whose better response scores higher), "margin", "reward_mean",
    "reward_std", "responses"} over the split's first eval.batches batches, dropout off."""
    loss = RewardLoss(run.config.center_coef, keep_scores=True)
    examples, size = run.splits[split].examples, run.config.train.batch_size
    starts = list(range(0, len(examples), size))[: run.config.eval.batches]
    total, count = 0.0, 0
    with dropout_off():
        for start in starts:
            batch = collate_preferences(examples[start : start + size], pad_id(run.tokenizer))
            batch = {k: v.to(run.strategy.device) for k, v in batch.items()}
            with run.precision.autocast():
                summed, n = loss({MODEL: run.model}, batch)
            total, count = total + float(summed), count + n
    return {"loss": total / max(count, 1), **loss.stats.take()}


def evaluate(run: RewardRun) -> dict[str, Any]:
    """The dev metrics (train's when there is no dev split); keeps the reward mean / std for checkpoints."""
    split = "dev" if "dev" in run.splits else "train"
    metrics = evaluate_split(run, split)
    run.stats = {
        "mean": metrics["reward_mean"],
        "std": metrics["reward_std"],
        "count": metrics["responses"],
        "split": split,
    }
    return metrics


def checkpoint(run: RewardRun, step: int) -> Path:
    if run.stats is None:
        evaluate(run)
    info = {
        "recipe": to_dict(run.config),
        STATS_KEY: run.stats,
        "chat_template": template_name(run.encoding),  # None: conversations written as HH transcripts
    }
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


# ---- the recipe ------------------------------------------------------------------------------------
def reward(config: RewardConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final checkpoint, dev metrics and reward statistics."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _reward(config, strategy, plan, stream)
    finally:
        strategy.close()


def _reward(config: RewardConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_reward_run(config, strategy, plan.resume_from)
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
    if has_dev and step == 0:
        logger.log(0, {f"dev_{k}": v for k, v in evaluate(run).items()})  # before any training
    run.model.train()
    logger.begin(step)
    bad_steps, last_log, started = 0, time.time(), time.time()
    while step < run.steps:
        loss = reward_step(run)
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
            train_stats = run.loss.stats.take()  # the pairs since the last log
            metrics = {"loss": loss, "accuracy": train_stats["accuracy"], "margin": train_stats["margin"]}
            metrics.update(lr=run.scheduler.get_last_lr()[0], epoch=round(run.batches.epochs, 3))
            metrics["steps_per_s"] = config.log.every / max(now - last_log, 1e-9)
            last_log = now
        if has_dev and (step == run.steps or (config.eval.every and step % config.eval.every == 0)):
            metrics.update({f"dev_{k}": v for k, v in evaluate(run).items()})
        if metrics:
            logger.log(step, metrics)
        if config.checkpoint.every and step % config.checkpoint.every == 0 and step < run.steps:
            checkpoint(run, step)
    train_seconds = time.time() - started
    final = evaluate(run)
    path = checkpoint(run, step)
    summary = {
        "step": step,
        "train_seconds": round(train_seconds, 2),
        "chat_template": template_name(run.encoding),
        "examples": {name: len(split.examples) for name, split in run.splits.items()},
        "skipped": {name: split.skipped.to_dict() for name, split in run.splits.items() if split.skipped},
        run.stats["split"]: final,
        STATS_KEY: run.stats,
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


def resume(run: RewardRun, checkpoint_path: Path) -> int:
    check_resumable(run.model, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    run.stats = info.get(STATS_KEY)
    return int(info["step"])


def describe(run: RewardRun) -> str:
    c = run.config
    model = unwrap(run.model)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    sizes = ", ".join(f"{name} {len(split.examples):,} preferences" for name, split in run.splits.items())
    skipped = [f"{name}: {split.skipped}" for name, split in run.splits.items() if split.skipped]
    reads = "prompt + response (causal)" if run.encoding.causal else "[CLS] prompt [SEP] response [SEP]"
    written = template_name(run.encoding) or "HH transcripts"
    epochs = run.steps * c.train.accumulation * c.train.batch_size * run.strategy.data_parallel_size
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"data: {c.data.format}; {sizes}" + (f" ({'; '.join(skipped)})" if skipped else "") + "\n"
        f"model: {type(model).__name__} ({model.config.family}), {n_params:,} parameters ({trained:,} trained); "
        f"reads {reads}, conversations as {written}; max_length {c.data.max_length}\n"
        f"loss: Bradley-Terry" + (f" + {c.center_coef} x centering" if c.center_coef else "") + "\n"
        f"train: {run.steps} steps x {c.train.accumulation} x {c.train.batch_size} preferences "
        f"({epochs / len(run.splits['train'].examples):.2f} epochs) on {run.strategy.device} in "
        f"{run.precision.name}; lr {c.optim.lr}"
    )


__all__ = ["RewardConfig", "RewardLoss", "check", "reward", "validate"]
