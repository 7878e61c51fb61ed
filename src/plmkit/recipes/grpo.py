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

Exact resume: the prompt order is a position in seeded epochs, each generation batch samples with a seed
of its own (seed, batch index), and a generation batch still in use (num_iterations > 1) is saved with
the checkpoint. On several processes (ddp) every rank samples the same whole generation batch (same
weights, same seed) and trains on its rows of each micro-batch.
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

from plmkit.align.grpo import frac_reward_zero_std, group_advantages, grpo_count, grpo_loss
from plmkit.config import to_dict
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import ConfigError
from plmkit.files import atomic_file
from plmkit.generation import GenerationConfig
from plmkit.generation.config import ABSOLUTE_POSITIONS
from plmkit.model.dropout import dropout_off
from plmkit.prompting.chat import ChatTemplate
from plmkit.recipes.common import check_resumable, fp32_master_weights
from plmkit.recipes.grpo_config import GrpoConfig
from plmkit.recipes.grpo_inputs import (
    Prompt,
    PromptSplit,
    build_policy,
    build_reference,
    columns_read,
    grpo_tokenizer,
    prompt_template,
    read_prompts,
)
from plmkit.recipes.grpo_rewards import RewardFunction, build_reward_functions, check_gold, combine, score
from plmkit.recipes.rollouts import Rollouts, sample_rollouts
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
from plmkit.train.loop import train_step
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap

POLICY = "model"  # the trained policy: the checkpoint's own model
Batch = dict[str, torch.Tensor]
ROLLOUT_KEYS = ("input_ids", "attention_mask", "response_mask", "advantages", "old_logprobs", "ref_logprobs")


# ---- the loss -----------------------------------------------------------------------------------------
def completion_logprobs(
    model: torch.nn.Module, batch: Batch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((B, T) log p(token) of the completion tokens under logits / temperature (0.0 elsewhere), and with
    `with_entropy` the entropy of those distributions (B, T), without gradient). One forward for the
    hidden states; the LM head then runs only at the M positions that predict a completion token, not at
    the prompt's or the padding's (trl's logits_to_keep keeps the padding). Dividing by the sampling
    temperature scores the completions under the distribution they were sampled from, as trl does."""
    input_ids, mask = batch["input_ids"], batch["response_mask"]
    hidden = model(input_ids, batch["attention_mask"], compute_logits=False).hidden_states  # (B, T, C)
    predicts = mask[:, 1:]  # position t predicts token t + 1
    logits = unwrap(model).lm_head(hidden[:, :-1][predicts]).float()  # (M, V)
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = logits.log_softmax(dim=-1)  # (M, V)
    picked = logprobs.gather(1, input_ids[:, 1:][predicts][:, None]).squeeze(1)  # (M,)
    out = picked.new_zeros(mask.shape).masked_scatter(mask, picked)  # (B, T); mask[:, 0] is a prompt token
    if not with_entropy:
        return out, None
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(dim=-1)  # (M,)
        return out, entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)


@torch.no_grad()
def frozen_completion_logprobs(model: torch.nn.Module, batch: Batch, temperature: float) -> torch.Tensor:
    """completion_logprobs without gradients or dropout: the reference, or the policy that sampled."""
    with dropout_off():
        return completion_logprobs(model, batch, temperature)[0]


class GrpoLoss:
    """The engine's loss on a micro-batch of completions: the policy's per-token log-probs (one forward),
    then plmkit.align.grpo.grpo_loss -> (loss sum, count). `count(batch)` is known before any forward
    (grpo, dr_grpo: the completions; bnpo, dapo: the completion tokens; plmkit.align.grpo.grpo_count),
    so the step's loss is exactly the full generation batch's, however it is cut into micro-batches.
    It also sums what the logs report (entropy, KL, clip ratios per completion token) over the step."""

    def __init__(self, config: GrpoConfig) -> None:
        self.g = config.grpo
        self.temperature = config.generation.temperature
        self.max_completion_length = config.generation.max_new_tokens
        self.totals: dict[str, float] = {}

    def count(self, batch: Batch) -> int:
        return grpo_count(batch["response_mask"], self.g.loss_type)

    def __call__(self, models: Mapping[str, torch.nn.Module], batch: Batch) -> tuple[torch.Tensor, Any]:
        mask = batch["response_mask"]
        logprobs, entropy = completion_logprobs(models[POLICY], batch, self.temperature, with_entropy=True)
        loss_sum, count, stats = grpo_loss(
            logprobs,
            batch.get(
                "old_logprobs"
            ),  # None (one step per generation batch): the ratio is 1, not its gradient
            batch["advantages"],
            mask,
            ref_logprobs=batch.get("ref_logprobs"),
            beta=self.g.beta,
            epsilon_low=self.g.epsilon_low,
            epsilon_high=self.g.epsilon_high,
            loss_type=self.g.loss_type,
            max_completion_length=self.max_completion_length,
        )
        tokens = float(mask.sum())
        if tokens:
            self._add("tokens", tokens)
            self._add("entropy", float(entropy.sum()))
            for key, value in stats.items():  # token means of this micro-batch -> token sums
                self._add(key.removesuffix("_mean"), float(value) * tokens)
        return loss_sum, count

    def _add(self, key: str, value: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + value

    def step_metrics(self, strategy: Strategy) -> dict[str, float]:
        """The step's entropy, KL and clip ratios per completion token, over every rank's rows; resets the
        sums (every rank calls it: the sums are added up over the ranks)."""
        keys = sorted(self.totals)  # the same keys on every rank: the same loss ran there
        totals = dict(zip(keys, strategy.sum_over_ranks(*(self.totals[k] for k in keys)), strict=True))
        self.totals = {}
        tokens = totals.pop("tokens", 0.0)
        return {key: value / tokens for key, value in totals.items()} if tokens else {}


# ---- the generation batch -----------------------------------------------------------------------------
@dataclass
class GenerationBatch:
    """One generation batch: its rows (prompt + completion, right padded), what the loss reads per row,
    and how many optimizer steps have used it. A checkpointed object: a batch still in use is saved."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # ROLLOUT_KEYS present, on the CPU
    used: int = 0  # optimizer steps trained on it so far
    metrics: dict[str, float] = field(default_factory=dict)  # its rewards etc., logged by its first step

    @property
    def empty(self) -> bool:
        return not self.tensors

    def micro_batches(self, rows: int) -> list[Batch]:
        """Consecutive `rows`-row slices, each cut to its longest row."""
        n = self.tensors["input_ids"].shape[0]
        out = []
        for start in range(0, n, rows):
            part = {k: v[start : start + rows] for k, v in self.tensors.items()}
            length = int(part["attention_mask"].sum(dim=1).max())
            out.append({k: v[:, :length] if v.dim() == 2 else v for k, v in part.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"tensors": dict(self.tensors), "used": self.used, "metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tensors, self.used, self.metrics = (
            dict(state["tensors"]),
            int(state["used"]),
            dict(state["metrics"]),
        )


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


# ---- sampling a generation batch ------------------------------------------------------------------------
def sampling_config(config: GrpoConfig, tokenizer: Any) -> GenerationConfig:
    g = config.generation
    return GenerationConfig(
        max_new_tokens=g.max_new_tokens,
        do_sample=True,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id,
    )


def batch_seed(config: GrpoConfig, index: int) -> int:
    """The sampling seed of generation batch `index`: fixed by the recipe's seed, so a resume redraws it."""
    return (config.seed * 1_000_003 + index * 10_007) % 2**62


def completion_texts(run: GrpoRun, rollouts: Rollouts) -> tuple[list[list[int]], list[str]]:
    ids = rollouts.responses()  # without the EOS
    return ids, run.tokenizer.decode_batch(ids)


def reward_columns(prompts: list[Prompt], repeat: int) -> dict[str, list[Any]]:
    """Each column of the prompt rows as one list over the completions (a prompt's values repeated)."""
    names = list(dict.fromkeys(k for p in prompts for k in p.columns))
    return {k: [p.columns.get(k) for p in prompts for _ in range(repeat)] for k in names}


def sample_generation_batch(run: GrpoRun, index: int) -> GenerationBatch:
    """Sample, score and prepare generation batch `index` (no gradients; the policy is not changed)."""
    c, g = run.config, run.config.num_generations
    prompts = [run.train.prompts[i] for i in run.order.next_indices()]
    policy = unwrap(run.model)
    rollouts = sample_rollouts(
        policy, [p.ids for p in prompts], sampling_config(c, run.tokenizer), n=g, seed=batch_seed(c, index)
    )
    ids, texts = completion_texts(run, rollouts)
    per_function = score(
        run.rewards, [p.text for p in prompts for _ in range(g)], texts, ids, reward_columns(prompts, g)
    )  # (N, F)
    rewards = combine(per_function, [f.weight for f in run.rewards], g)  # (N,)
    advantages = group_advantages(rewards, g, scale=c.grpo.scale_rewards)
    tensors = {k: v.cpu() for k, v in rollouts.batch().items()}
    tensors["advantages"] = advantages.float().cpu()
    if c.grpo.num_iterations > 1:  # the ratio's denominator: the policy that sampled, before any update
        tensors["old_logprobs"] = scored(run, policy, tensors)
    if run.reference is not None:
        tensors["ref_logprobs"] = scored(run, run.reference, tensors)
    lengths = rollouts.response_lengths.float()
    metrics = {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "frac_reward_zero_std": float(frac_reward_zero_std(rewards, g)),
        **{f"reward/{f.name}": float(per_function[:, j].nanmean()) for j, f in enumerate(run.rewards)},
        "completion_length": float(lengths.mean()),
        "completion_length_max": float(lengths.max()),
        "terminated": float(rollouts.ended_with_eos.float().mean()),  # ended with EOS, not cut at the limit
        "rollout_seconds": rollouts.rollout_seconds,
    }
    return GenerationBatch(tensors, 0, metrics)


def scored(run: GrpoRun, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, T) a frozen model's per-token log-probs of the completions (at the sampling temperature), a
    micro-batch at a time."""
    device, rows = run.strategy.device, run.config.train.batch_size
    keys = ("input_ids", "attention_mask", "response_mask")
    parts = []
    for start in range(0, tensors["input_ids"].shape[0], rows):
        part = {k: tensors[k][start : start + rows].to(device) for k in keys}
        with run.precision.autocast():
            logprobs = frozen_completion_logprobs(model, part, run.config.generation.temperature)
        parts.append(logprobs.float().cpu())
    return torch.cat(parts)


# ---- one step, the dev reward, checkpoints ----------------------------------------------------------------
def grpo_step(run: GrpoRun, step: int) -> tuple[float, dict[str, float]]:
    """One optimizer step on the current generation batch (sampling a new one first when it is used up);
    returns its loss and metrics (the generation batch's rewards on the step that sampled it)."""
    c = run.config
    metrics: dict[str, float] = {}
    if run.batch.empty:
        run.batch = sample_generation_batch(run, step // c.grpo.num_iterations)
        metrics.update(run.batch.metrics)
    rows = c.train.batch_size * run.strategy.data_parallel_size  # a global micro-batch
    loss = train_step(
        {POLICY: run.model},
        {POLICY: run.optimizer},
        {POLICY: run.scheduler},
        run.loss,  # loss_fn(models, batch) -> (loss sum, count), with count(batch)
        run.batch.micro_batches(rows),
        run.strategy,
        run.precision,
        c.train.clip_grad,
    )
    metrics.update(run.loss.step_metrics(run.strategy))
    run.batch.used += 1
    if run.batch.used == c.grpo.num_iterations:
        run.batch = GenerationBatch()
    return loss, metrics


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
