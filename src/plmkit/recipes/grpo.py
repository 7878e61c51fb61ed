"""The GRPO recipe (group relative policy optimization, Shao et al. 2024): `plm grpo RECIPE.yaml
[key=value ...] [--resume] [--overwrite]`.

Read it top to bottom. No critic and no reward model: each prompt gets a group of num_generations sampled
completions, the reward functions score them, and a completion's advantage is its reward relative to its
group (r - group mean, divided by the group's std, the batch's std, or nothing: Dr. GRPO). The loss is
the clipped importance ratio of PPO per token, with an optional k3 KL to a frozen reference (beta),
averaged as grpo / bnpo / dr_grpo / dapo (plmkit.align.grpo). The step is the engine's
(plmkit.train.loop.train_step) with that loss:

    policy (init_from, or a preset) + tokenizer + prompt rendering; reference only when beta > 0
    for each generation batch (every grpo.num_iterations steps):
        prompts (shuffled epochs) -> num_generations completions each (plmkit.recipes.rollouts: KV cache)
        -> rewards per function (plmkit.recipes.grpo_rewards) -> weighted sum -> group advantages
        -> the reference's log-probs (beta > 0); the sampling policy's log-probs ("old", num_iterations > 1)
    for each step:  its micro-batches -> (loss sum, count) -> backward -> clip -> step -> log / checkpoint
    dev (data.dev): the mean reward of greedy completions before training, every eval.every steps, at the end

The generation batch and the loss are plmkit.recipes.grpo_step. Exact resume: the prompt order is a position in seeded epochs, each generation batch samples with a seed
of its own (seed, batch index), and a generation batch still in use (num_iterations > 1) is saved with
the checkpoint. On several processes (ddp) every rank samples the same whole generation batch (same
weights, same seed) and trains on its rows of each micro-batch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.config import to_dict
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import ConfigError
from plmkit.files import atomic_file
from plmkit.generation.config import ABSOLUTE_POSITIONS
from plmkit.prompting.chat import ChatTemplate
from plmkit.recipes.common import check_resumable, fp32_master_weights
from plmkit.recipes.grpo_config import GrpoConfig
from plmkit.recipes.grpo_inputs import (
    PromptSplit,
    build_policy,
    build_reference,
    columns_read,
    grpo_tokenizer,
    prompt_template,
    read_prompts,
)
from plmkit.recipes.grpo_rewards import RewardFunction, build_reward_functions, check_gold, combine, score
from plmkit.recipes.grpo_step import (
    POLICY,
    GenerationBatch,
    GrpoLoss,
    completion_texts,
    grpo_step,
    reward_columns,
    sampling_config,
)
from plmkit.recipes.rollouts import sample_rollouts
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.train.checkpoint import load_training_state, read_trainer_info
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.build import build_strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, truncate_metrics
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap


@dataclass
class GrpoRun:
    config: GrpoConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    template: ChatTemplate | None
    train: PromptSplit
    dev: PromptSplit | None
    rewards: list[RewardFunction]
    model: torch.nn.Module  # the policy, as the loop calls it (wrapped by the strategy)
    reference: torch.nn.Module | None  # frozen; None when beta = 0
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: EpochBatches  # which prompts the next generation batch samples
    batch: GenerationBatch
    loss: GrpoLoss

    def train_state(self) -> TrainState:
        stateful = {"scaler": self.precision.scaler, "prompts": self.order, "generation_batch": self.batch}
        return TrainState({POLICY: self.model}, {POLICY: self.optimizer}, {POLICY: self.scheduler}, stateful)


def prompts_per_batch(config: GrpoConfig, strategy: Strategy) -> int:
    """Prompts of a generation batch: its completions (batch_size x accumulation x processes) / group size."""
    c = config
    return c.train.batch_size * c.train.accumulation * strategy.data_parallel_size // c.num_generations


# ---- checks before anything is written ------------------------------------------------------------------
def validate(config: GrpoConfig) -> None:
    """ConfigError for what would fail once the run is under way (the prompts are read when it builds)."""
    if config.num_generations < 2:
        raise ConfigError(
            f"num_generations={config.num_generations}: GRPO compares each completion with the others of its "
            "group, and a group of one has nothing to compare with (every advantage is 0); set "
            "num_generations=2 or more"
        )
    per_step = config.train.batch_size * config.train.accumulation
    if per_step % config.num_generations:
        raise ConfigError(
            f"train.batch_size x train.accumulation = {per_step} completions per step is not a multiple of "
            f"num_generations={config.num_generations}; a generation batch holds whole groups: make it one "
            f"(e.g. train.batch_size={config.num_generations * max(1, per_step // config.num_generations)})"
        )
    if not config.data.train:
        raise ConfigError("the recipe has no data.train; set data.train=FILE (prompt rows)")
    if not config.init_from and not config.model.preset:
        raise ConfigError(
            "the recipe names no policy; set init_from= to a plmkit or Hugging Face causal LM (e.g. an SFT "
            "checkpoint), or model.preset= with tokenizer.path= to start from a random initialisation"
        )
    if not config.init_from and not config.tokenizer.path:
        raise ConfigError("model.preset without init_from needs tokenizer.path= (a tokenizer folder)")
    if config.distributed.strategy in ("fsdp", "deepspeed") or config.distributed.tensor_parallel != 1:
        raise ConfigError(
            f"distributed.strategy={config.distributed.strategy}: GRPO samples from the whole policy on every "
            "process; use distributed.strategy=ddp (or single) and distributed.tensor_parallel=1"
        )
    if config.chat_template is not None and not str(config.chat_template).strip():
        raise ConfigError(
            "chat_template is empty; give raw, a built-in name (chatml, qwen, llama3, plain), Jinja source, or null"
        )
    columns_read(config)  # the prompt template's fields
    build_reward_functions(config.rewards)  # importable, named once, finite weights


def check(config: GrpoConfig) -> RunPlan:
    """The recipe and what this start may do with its run folder, before any process starts."""
    validate(config)
    return plan_run_folder(config)


# ---- building the run ---------------------------------------------------------------------------------------
def build_grpo_run(config: GrpoConfig, strategy: Strategy, resume_from: Path | None) -> GrpoRun:
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)
    if not strategy.uses_grad_scaler():
        precision.scaler = torch.amp.GradScaler(device.type, enabled=False)

    tokenizer = grpo_tokenizer(config, resume_from)
    model = fp32_master_weights(build_policy(config, tokenizer))  # a base that is no causal LM fails first
    template = prompt_template(config, tokenizer)
    if resume_from is not None:
        check_resumable(model, resume_from)
    reference = None
    if config.grpo.beta > 0:  # beta = 0 loads no reference at all
        reference = fp32_master_weights(build_reference(config, tokenizer)).to(device)
    model.to(device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)

    positions = model.config.max_positions if model.config.position in ABSOLUTE_POSITIONS else None
    train = read_prompts(config, "train", tokenizer, template, positions)
    dev = read_prompts(config, "dev", tokenizer, template, positions) if config.data.dev else None
    rewards = build_reward_functions(config.rewards)
    for split in (train, dev):
        if split is not None:
            check_gold(rewards, split.name, [p.columns for p in split.prompts])

    model = strategy.wrap(model)
    optimizer = strategy.make_optimizer(model, config.optim)
    strategy.seed_rank(config.seed)
    scheduler = build_scheduler(optimizer, config.train.steps, config.schedule)
    order = EpochBatches(len(train.prompts), prompts_per_batch(config, strategy), seed=config.seed)
    return GrpoRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, template, train, dev, rewards, model,
        reference, optimizer, scheduler, order, GenerationBatch(), GrpoLoss(config),
    )  # fmt: skip


# ---- the dev reward, checkpoints ----------------------------------------------------------------
def dev_reward(run: GrpoRun) -> dict[str, float]:
    """{"dev_reward", "dev_reward/<name>"...}: the mean reward of greedy completions of the dev prompts."""
    c = run.config
    prompts = run.dev.prompts[: c.eval.prompts]
    greedy = sampling_config(c, run.tokenizer).replace(do_sample=False)
    rollouts = sample_rollouts(
        unwrap(run.model), [p.ids for p in prompts], greedy, batch_size=c.eval.batch_size
    )
    ids, texts = completion_texts(run, rollouts)
    per_function = score(run.rewards, [p.text for p in prompts], texts, ids, reward_columns(prompts, 1))
    total = combine(per_function, [f.weight for f in run.rewards], 1)
    out = {"dev_reward": float(total.mean())}
    out.update(
        {f"dev_reward/{f.name}": float(per_function[:, j].nanmean()) for j, f in enumerate(run.rewards)}
    )
    return out


def checkpoint(run: GrpoRun, step: int) -> Path:
    info = {"recipe": to_dict(run.config)}
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


# ---- the recipe -----------------------------------------------------------------------------------------
def grpo(config: GrpoConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final checkpoint and the dev rewards."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _grpo(config, strategy, plan, stream)
    finally:
        strategy.close()


def _grpo(config: GrpoConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_grpo_run(config, strategy, plan.resume_from)
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
    steps = config.train.steps
    logger = RunLogger(
        run.run_dir, steps, tensorboard=config.log.tensorboard, stream=stream, enabled=strategy.is_main
    )
    if strategy.is_main:
        truncate_metrics(run.run_dir / "metrics.jsonl", step)
    logger.print(describe(run))
    if step:
        logger.print(f"resumed from step {step} ({plan.resume_from})")
    first_dev = None
    if run.dev is not None and step == 0:
        first_dev = dev_reward(run)
        logger.log(0, first_dev, show=False)  # before any training
        logger.print(f"step {0:>6}/{steps}  dev_reward {first_dev['dev_reward']:.4f}")
    run.model.train()
    logger.begin(step)
    bad_steps, started, window = 0, time.time(), []
    while step < steps:
        step_started = time.time()
        loss, metrics = grpo_step(run, step)
        step += 1
        bad_steps = bad_steps + 1 if math.isnan(loss) else 0
        if bad_steps >= config.train.max_bad_steps:
            raise TrainingError(
                f"the loss was not finite for {bad_steps} steps in a row (step {step}); lower optim.lr, "
                "use train.precision=fp32 or check the reward functions"
            )
        window.append({"loss": loss, **metrics, "step_seconds": time.time() - step_started})
        evaluate = run.dev is not None and (
            step == steps or (config.eval.every and step % config.eval.every == 0)
        )
        if step % config.log.every == 0 or step == steps or evaluate:
            metrics = {**window_means(window), "lr": run.scheduler.get_last_lr()[0]}
            window = []
            if evaluate:
                metrics.update(dev_reward(run))
            logger.log(step, metrics, show=False)
            logger.print(progress_line(step, steps, metrics))
        if config.checkpoint.every and step % config.checkpoint.every == 0 and step < steps:
            checkpoint(run, step)
    train_seconds = time.time() - started
    path = checkpoint(run, step)
    last = read_last_dev(run.run_dir) if run.dev is not None else {}
    summary = {
        "step": step,
        "train_seconds": round(train_seconds, 2),
        "prompts": {"train": len(run.train.prompts), **({"dev": len(run.dev.prompts)} if run.dev else {})},
        "skipped": {s.name: s.skipped.to_dict() for s in (run.train, run.dev) if s is not None and s.skipped},
        "dev_start": first_dev or {},
        "dev": last,
    }
    if strategy.is_main:
        with atomic_file(run.run_dir / "metrics.json") as f:
            f.write((json.dumps(summary, indent=1) + "\n").encode())
    logger.close()
    return {"checkpoint": str(path), **summary}


def window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the steps since the last log line that have it (a generation batch's
    rewards come with the step that sampled it; a skipped step's nan loss is left out)."""
    keys = list(dict.fromkeys(k for m in window for k in m))
    out = {}
    for key in keys:
        values = [m[key] for m in window if key in m and math.isfinite(m[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def read_last_dev(run_dir: Path) -> dict[str, float]:
    """The last dev rewards logged (metrics.jsonl), for the summary."""
    from plmkit.train.logging import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "dev_reward" in r]
    return {k: v for k, v in rows[-1].items() if k.startswith("dev_reward")} if rows else {}


def progress_line(step: int, steps: int, m: dict[str, Any]) -> str:
    parts = [f"step {step:>6}/{steps}", f"loss {m['loss']:.4f}"]
    for key, label in (
        ("reward", "reward"),
        ("kl", "kl"),
        ("completion_length", "len"),
        ("dev_reward", "dev_reward"),
    ):
        if key in m:
            parts.append(f"{label} {m[key]:.4f}" if key != "completion_length" else f"{label} {m[key]:.1f}")
    return "  ".join(parts)


def resume(run: GrpoRun, checkpoint_path: Path) -> int:
    check_resumable(run.model, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    return int(info["step"])


def describe(run: GrpoRun) -> str:
    c = run.config
    model = unwrap(run.model)
    n_params = sum(p.numel() for p in model.parameters())
    template = "raw text" if run.template is None else (run.template.name or "custom")
    sizes = f"train {len(run.train.prompts):,} prompts" + (
        f", dev {len(run.dev.prompts):,}" if run.dev else ""
    )
    rewards = ", ".join(f"{f.name} x {f.weight:g}" for f in run.rewards)
    g = c.grpo
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"data: {c.data.format}; {sizes}; prompts rendered as {template}; max {c.data.max_prompt_length} tokens\n"
        f"policy: {type(model).__name__}, {n_params:,} parameters; reference: "
        f"{'a frozen copy (beta ' + format(g.beta, 'g') + ')' if run.reference is not None else 'none (beta 0)'}\n"
        f"rewards: {rewards}\n"
        f"grpo: {c.num_generations} completions x {prompts_per_batch(c, run.strategy)} prompts per generation batch, "
        f"{g.num_iterations} step(s) each; loss {g.loss_type}, eps {g.epsilon_low:g}/{g.epsilon_high:g}, "
        f"scale_rewards {g.scale_rewards}; up to {c.generation.max_new_tokens} new tokens at temperature "
        f"{c.generation.temperature:g}\n"
        f"train: {c.train.steps} steps x {c.train.accumulation} x {c.train.batch_size} completions on "
        f"{run.strategy.device} in {run.precision.name}; lr {c.optim.lr}"
    )


__all__ = ["GrpoConfig", "GrpoLoss", "check", "grpo", "validate"]
