"""The PPO recipe with InstructGPT's pre-training mix (PPO-ptx): `plm ppo RECIPE.yaml [key=value ...]
[--resume] [--overwrite]`.

Read it top to bottom (the config: plmkit.recipes.ppo_config; the models: ppo_inputs; a step: ppo_step):

    SFT model -> actor (trained) + reference (frozen); reward model -> frozen scorer + critic (trained)
    (peft: one frozen base, actor and critic adapters, the reference = the actor with adapters off)
    for each step:  prompts -> completions (KV cache, plmkit.generation) -> old log-probs, reference
                    log-probs, values, reward-model scores (normalised, missing-EOS penalty, clipped)
                    -> per-token rewards (score at the last token - kl_coef · KL) -> GAE -> whitened
                    -> ppo.epochs x shuffled mini-batches: ONE engine step each (train_step) whose loss is
                       policy loss + vf_coef · value loss + ptx.coef · pre-training NLL
                    -> KL controller update -> log / evaluate / checkpoint
    at the end:     the dev evaluation (greedy completions: reward, verifier accuracy; pre-training loss),
                    the final checkpoint (actor at the root, critic in models/critic), <run>/ema, metrics.json

A checkpoint holds the trained models and optimizers; the frozen ones are rebuilt from the recipe. A resume
continues exactly: the prompt order, the pre-training blocks, the KL coefficient, the EMA and the random
streams are restored, and every sampling seed derives from (seed, step).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.align.kl import AdaptiveKLController, FixedKLController
from plmkit.config import to_dict
from plmkit.data import PretrainingData
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import ConfigError
from plmkit.evaluate.loss import loss_metrics, stream_loss
from plmkit.files import atomic_file
from plmkit.generation.config import ABSOLUTE_POSITIONS
from plmkit.io import save
from plmkit.recipes.common import check_resumable
from plmkit.recipes.grpo_inputs import PromptSplit, grpo_tokenizer, prompt_template, read_prompts
from plmkit.recipes.grpo_rewards import RewardFunction, build_reward_functions, check_gold
from plmkit.recipes.ppo_config import PpoConfig
from plmkit.recipes.ppo_inputs import PpoModels, build_models, build_ptx_data, ptx_batch
from plmkit.recipes.ppo_step import (
    ACTOR,
    CRITIC,
    PpoLoss,
    generation_config,
    in_chunks,
    learn,
    make_experience,
    reward_scores,
    verifier_accuracy,
)
from plmkit.recipes.rollouts import sample_rollouts
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.validate import check_peft_section
from plmkit.train.checkpoint import load_training_state, read_trainer_info
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.build import build_strategy
from plmkit.train.errors import TrainingError
from plmkit.train.logging import RunLogger, read_metrics, truncate_metrics
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap


class ActorEma:
    """An exponential moving average of the actor's trained parameters (updated after every optimizer step)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, p in unwrap(model).named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, tensor in state["shadow"].items():
            self.shadow[name].copy_(tensor)


@dataclass
class PpoRun:
    config: PpoConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    train: PromptSplit
    dev: PromptSplit | None
    verifiers: list[RewardFunction]
    models: PpoModels
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    prompt_batches: EpochBatches  # which prompts the next step samples
    ptx_data: PretrainingData | None
    kl_controller: FixedKLController | AdaptiveKLController
    ema: ActorEma | None
    loss: PpoLoss
    eos_ids: int | None

    @property
    def actor(self) -> torch.nn.Module:
        return self.models.actor

    @property
    def critic(self) -> torch.nn.Module:
        return self.models.critic

    @property
    def prompts(self) -> list:
        return self.train.prompts

    def train_state(self) -> TrainState:
        stateful: dict[str, Any] = {
            "scaler": self.precision.scaler,
            "prompts": self.prompt_batches,
            "kl_controller": self.kl_controller,
        }
        if self.ptx_data is not None:
            stateful["ptx_data"] = self.ptx_data
        if self.ema is not None:
            stateful["ema"] = self.ema
        models = {ACTOR: self.actor, CRITIC: self.critic}
        return TrainState(models, self.optimizers, self.schedulers, stateful)


# ---- checks before anything is written ------------------------------------------------------------------
def validate(config: PpoConfig) -> None:
    """ConfigError for what would fail once the run is under way (models and prompts are read when it builds)."""
    check_peft_section(config.peft)
    p = config.ppo
    if not config.init_from:
        raise ConfigError("the recipe names no SFT model; set init_from= to a causal LM checkpoint (plm sft)")
    if not config.reward_model:
        raise ConfigError("the recipe names no reward model; set reward_model= to a plm reward checkpoint")
    if not config.data.train:
        raise ConfigError("the recipe has no data.train; set data.train=FILE (prompt rows)")
    if p.batch_size % (p.mini_batch_size) or p.mini_batch_size % config.train.batch_size:
        raise ConfigError(
            f"ppo.batch_size={p.batch_size}, ppo.mini_batch_size={p.mini_batch_size} and train.batch_size="
            f"{config.train.batch_size}: each must be a multiple of the next (completions per step, per "
            "optimizer step, per micro-batch)"
        )
    if p.batch_size % config.samples_per_prompt:
        raise ConfigError(
            f"ppo.batch_size={p.batch_size} is not a multiple of samples_per_prompt={config.samples_per_prompt}"
        )
    if config.train.accumulation != 1:
        raise ConfigError(
            "train.accumulation is set by ppo.mini_batch_size / train.batch_size in plm ppo; leave it at 1"
        )
    if config.distributed.strategy not in ("auto", "single") or config.distributed.tensor_parallel != 1:
        raise ConfigError(
            f"distributed.strategy={config.distributed.strategy}: plm ppo runs in one process; use "
            "distributed.strategy=single (or auto)"
        )
    if config.ptx.coef and not config.ptx.data.sources:
        raise ConfigError(
            f"ptx.coef={config.ptx.coef} needs pre-training text: set ptx.data.sources=[{{path: FILE}}], or ptx.coef=0"
        )
    if config.chat_template is not None and not str(config.chat_template).strip():
        raise ConfigError("chat_template is empty; give raw, a built-in name, Jinja source, or null")
    if config.verifier:
        build_reward_functions(config.verifier)  # importable, named once, finite weights


def check(config: PpoConfig) -> RunPlan:
    validate(config)
    return plan_run_folder(config)


# ---- building the run -------------------------------------------------------------------------------------
def build_ppo_run(config: PpoConfig, strategy: Strategy, resume_from: Path | None) -> PpoRun:
    if strategy.world_size > 1:
        raise ConfigError("plm ppo runs in one process; start it without --nproc")
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)

    tokenizer = grpo_tokenizer(config, resume_from)
    models = build_models(config, tokenizer)
    if resume_from is not None:
        check_resumable(models.actor, resume_from)
    for model in (models.actor, models.critic, models.reference, models.reward):
        if model is not None:
            model.to(device)
    template = prompt_template(config, tokenizer)
    actor_config = unwrap(models.actor).config
    positions = actor_config.max_positions if actor_config.position in ABSOLUTE_POSITIONS else None
    train = read_prompts(config, "train", tokenizer, template, positions)
    dev = read_prompts(config, "dev", tokenizer, template, positions) if config.data.dev else None
    verifiers = build_reward_functions(config.verifier) if config.verifier else []
    for split in (train, dev):
        if split is not None and verifiers:
            check_gold(verifiers, split.name, [q.columns for q in split.prompts])

    p = config.ppo
    optimizers = {
        ACTOR: strategy.make_optimizer(models.actor, config.optim),
        CRITIC: strategy.make_optimizer(models.critic, config.critic_optim),
    }
    updates = config.train.steps * p.epochs * (p.batch_size // p.mini_batch_size)  # optimizer steps
    schedulers = {name: build_scheduler(o, updates, config.schedule) for name, o in optimizers.items()}
    order = EpochBatches(len(train.prompts), p.batch_size // config.samples_per_prompt, seed=config.seed)
    if p.adaptive_kl:
        controller = AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
    else:
        controller = FixedKLController(p.kl_coef)
    ema = ActorEma(models.actor, config.ema.decay) if config.ema.decay else None
    loss = PpoLoss(p.clip_eps, p.value_clip, p.vf_coef)
    return PpoRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, train, dev, verifiers, models,
        optimizers, schedulers, order, build_ptx_data(config, tokenizer), controller, ema, loss,
        tokenizer.eos_id,
    )  # fmt: skip


# ---- evaluation, checkpoints ------------------------------------------------------------------------------
def evaluate(run: PpoRun) -> dict[str, float]:
    """dev_reward (raw reward-model score), dev_accuracy (verifier) and dev_eos_fraction of greedy
    completions of the dev prompts; ptx_dev_loss: the actor's NLL per token on ptx.data's validation blocks."""
    c, out = run.config, {}
    if run.dev is not None:
        prompts = run.dev.prompts[: c.eval.prompts]
        rollouts = sample_rollouts(
            run.actor,
            [q.ids for q in prompts],
            generation_config(run, greedy=True),
            batch_size=c.eval.batch_size,
        )
        out["dev_reward"] = float(
            in_chunks(lambda b: reward_scores(run, b), rollouts.batch(), c.eval.batch_size).mean()
        )
        out["dev_eos_fraction"] = float(rollouts.ended_with_eos.float().mean())
        accuracy = verifier_accuracy(run, prompts, rollouts)
        if accuracy is not None:
            out["dev_accuracy"] = accuracy
    if run.ptx_data is not None and run.ptx_data.validation:
        batches = [ptx_batch(b) for b in run.ptx_data.validation_batches(c.eval.ptx_batches)]
        total, count = stream_loss(
            run.actor, batches, device=run.strategy.device, autocast=run.precision.autocast
        )
        if count:
            out["ptx_dev_loss"] = loss_metrics(total, count)["loss"]
    return out


def checkpoint(run: PpoRun, step: int) -> Path:
    info = {"recipe": to_dict(run.config), "kl_coef": run.kl_controller.value}
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


def save_ema(run: PpoRun) -> Path | None:
    """<run>/ema: the actor with its EMA weights (a plmkit checkpoint)."""
    if run.ema is None or not run.strategy.is_main:
        return None
    import copy

    model = copy.deepcopy(unwrap(run.actor))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in run.ema.shadow.items():
            params[name].copy_(tensor)
    folder = run.run_dir / "ema"
    save(model, run.tokenizer, folder)
    return folder


# ---- the recipe -------------------------------------------------------------------------------------------
def ppo(config: PpoConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final checkpoint and the dev metrics before and after."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _ppo(config, strategy, plan, stream)
    finally:
        strategy.close()


def _ppo(config: PpoConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_ppo_run(config, strategy, plan.resume_from)
        step = 0
        if plan.resume_from is not None:
            step = resume(run, plan.resume_from)
    except BaseException:
        if strategy.is_main:
            discard_new_folder(plan)  # a new run that failed to start leaves no folder behind
        raise
    record_recipe(plan, config, read_trainer_info(plan.resume_from) if plan.resume_from else {})
    steps = config.train.steps
    logger = RunLogger(run.run_dir, steps, tensorboard=config.log.tensorboard, stream=stream)
    truncate_metrics(run.run_dir / "metrics.jsonl", step)
    logger.print(describe(run))
    if step:
        logger.print(f"resumed from step {step} ({plan.resume_from})")
    evaluating = run.dev is not None or run.ptx_data is not None
    if evaluating and step == 0:
        first = evaluate(run)
        logger.log(0, first, show=False)  # before any training
        logger.print(progress_line(0, steps, first))
    logger.begin(step)
    bad_steps, started = 0, time.time()
    while step < steps:
        experience, metrics = make_experience(run, step)
        metrics.update(learn(run, experience, step))
        step += 1
        bad_steps = bad_steps + 1 if math.isnan(metrics["loss"]) else 0
        if bad_steps >= config.train.max_bad_steps:
            raise TrainingError(
                f"the loss was not finite for {bad_steps} steps in a row (step {step}); lower optim.lr, "
                "use train.precision=fp32 or check the reward model"
            )
        metrics["lr"] = run.schedulers[ACTOR].get_last_lr()[0]
        if evaluating and (step == steps or (config.eval.every and step % config.eval.every == 0)):
            metrics.update(evaluate(run))
        if step % config.log.every == 0 or step == steps or "dev_reward" in metrics:
            logger.log(step, metrics, show=False)
            logger.print(progress_line(step, steps, metrics))
        if config.checkpoint.every and step % config.checkpoint.every == 0 and step < steps:
            checkpoint(run, step)
    train_seconds = time.time() - started
    path = checkpoint(run, step)
    ema = save_ema(run)
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    evals = [r for r in rows if "dev_reward" in r or "ptx_dev_loss" in r]
    summary = {
        "step": step,
        "train_seconds": round(train_seconds, 2),
        "prompts": {"train": len(run.train.prompts), **({"dev": len(run.dev.prompts)} if run.dev else {})},
        "dev_start": _dev(evals[0]) if evals else {},
        "dev": _dev(evals[-1]) if evals else {},
        "kl_coef": run.kl_controller.value,
        **({"ema": str(ema)} if ema else {}),
    }
    with atomic_file(run.run_dir / "metrics.json") as f:
        f.write((json.dumps(summary, indent=1) + "\n").encode())
    logger.close()
    return {"checkpoint": str(path), **summary}


def _dev(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith(("dev_", "ptx_dev"))}


def progress_line(step: int, steps: int, m: dict[str, Any]) -> str:
    parts = [f"step {step:>5}/{steps}"]
    for key in ("reward", "accuracy", "kl", "ptx_loss", "dev_reward", "dev_accuracy", "ptx_dev_loss"):
        if key in m:
            parts.append(f"{key} {m[key]:.4f}")
    if "rollout_seconds" in m:
        parts.append(f"rollout {m['rollout_seconds']:.2f}s learn {m['learn_seconds']:.2f}s")
    return "  ".join(parts)


def resume(run: PpoRun, checkpoint_path: Path) -> int:
    check_resumable(run.actor, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    return int(info["step"])


def describe(run: PpoRun) -> str:
    c, p = run.config, run.config.ppo
    actor = unwrap(run.actor)
    trained = {
        name: sum(q.numel() for q in unwrap(m).parameters() if q.requires_grad)
        for name, m in ((ACTOR, run.actor), (CRITIC, run.critic))
    }
    reference = (
        "the actor with its adapters off"
        if run.models.reference is None
        else "a frozen copy of the SFT model"
    )
    sizes = f"train {len(run.train.prompts):,} prompts" + (
        f", dev {len(run.dev.prompts):,}" if run.dev else ""
    )
    ptx = (
        f"ptx coef {c.ptx.coef:g} x {c.ptx.batch_size} blocks of {c.ptx.data.block_size}"
        if c.ptx.coef
        else "no ptx"
    )
    kl = f"adaptive (target {p.kl_target:g})" if p.adaptive_kl else "fixed"
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"data: {sizes}; {c.samples_per_prompt} completion(s) per prompt, up to {c.generation.max_new_tokens} tokens\n"
        f"actor: {type(actor).__name__} ({trained[ACTOR]:,} trained parameters); critic: {trained[CRITIC]:,} "
        f"trained; reference: {reference}; reward mean / std {run.models.reward_mean:.3g} / {run.models.reward_std:.3g}\n"
        f"ppo: {p.batch_size} completions per step, {p.epochs} epochs of mini-batches of {p.mini_batch_size}; "
        f"kl {p.kl_estimator} coef {p.kl_coef:g} {kl}; {ptx}\n"
        f"train: {c.train.steps} steps on {run.strategy.device} in {run.precision.name}; lr {c.optim.lr} / "
        f"critic {c.critic_optim.lr}"
    )


__all__ = ["PpoConfig", "PpoLoss", "check", "ppo", "validate"]
