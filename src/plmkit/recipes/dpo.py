"""The DPO recipe: `plm dpo RECIPE.yaml [key=value ...] [--resume] [--nproc N] [--overwrite]`.

Read it top to bottom. Preference pairs (plmkit.prompting.preferences) become prompt + chosen and prompt +
rejected token ids with labels on the responses only; the step is the engine's
(plmkit.train.loop.train_step) with the DPO loss of plmkit.align.dpo:

    causal LM policy (init_from, or a preset) + its tokenizer + the chat template (saved with it)
    -> the reference: a frozen copy of the initial policy, another checkpoint (`reference`), or under
       LoRA / adapters the policy itself with its adapters off; `precompute_reference`: its log-probs
       once, before training, kept in <run>/reference_logps.safetensors (a resume reads them back)
    for each step:  micro-batches of shuffled train pairs -> log π(chosen), log π(rejected) (one forward of
                    both) and the reference's (no gradient) -> sigmoid / hinge / IPO per pair
                    (+ rpo_alpha x the chosen response's NLL per token) -> (sum over pairs, their number)
                    -> backward -> clip -> step -> log rewards / accuracies / margins / log-probs
    at the end:     the dev rewards, accuracies and margins, the final checkpoint, metrics.json

The reference is a frozen model in the engine's dict of models (no optimizer: never written to a
checkpoint, rebuilt by the recipe), no model at all when its log-probs are precomputed, or none beside
the policy under PEFT. Log-probs are sums over the response tokens (IPO: their mean per token, as trl).
The config is plmkit.recipes.dpo_config.DpoConfig.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plmkit.align.dpo import DpoLoss, dpo_loss, dpo_metrics
from plmkit.config import to_dict
from plmkit.data.tasks.batches import EpochBatches
from plmkit.errors import ConfigError
from plmkit.files import atomic_file
from plmkit.model.dropout import dropout_off
from plmkit.model.losses import IGNORE, sequence_logprobs, shifted
from plmkit.peft import apply_spec
from plmkit.peft.disable import SWITCHABLE, adapters_off, check_switchable
from plmkit.prompting.preferences import collate_responses
from plmkit.recipes.common import check_resumable, fp32_master_weights, quantize_base
from plmkit.recipes.dpo_config import DpoConfig
from plmkit.recipes.inputs import load_tokenizer_folder
from plmkit.recipes.preference_data import Encoding, PreferenceExample, PreferenceSplit, read_preference_split
from plmkit.recipes.preference_run import (
    pad_id,
    planned_steps,
    preference_encoding,
    run_precision,
    template_name,
    validate_preference_recipe,
)
from plmkit.recipes.runs import (
    RunPlan,
    discard_new_folder,
    plan_run_folder,
    prepare_run_folder,
    record_recipe,
)
from plmkit.recipes.sft_inputs import build_causal_lm, sft_tokenizer
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

MODEL, REFERENCE = "model", "reference"  # the policy and the frozen reference in the engine's models
REFERENCE_FILE = "reference_logps.safetensors"  # precompute_reference: in the run folder
Batch = dict[str, torch.Tensor]
SIDES = ("chosen", "rejected")


# ---- log-probs ---------------------------------------------------------------------------------------
def labelled_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence (B,): the sum of log p(token) over the labelled tokens (causal: label t is predicted
    at t - 1) and their number. A plain model puts only the labelled positions through its LM head (no
    (B, T, V) logits for the prompt); a wrapped one (DDP, FSDP, DeepSpeed) returns its full logits."""
    if unwrap(model) is not model:
        logits = model(input_ids, attention_mask=attention_mask, compute_logits=True).logits
        return sequence_logprobs(logits, labels, shift=True)
    h = model(input_ids, attention_mask=attention_mask, compute_logits=False).hidden_states  # (B, T, C)
    targets = shifted(labels)  # (B, T): position t predicts token t + 1
    keep = targets != IGNORE
    logits = model.lm_head(h[keep]).float()  # (N, V): the labelled positions only
    picked = -F.cross_entropy(logits, targets[keep], reduction="none")  # (N,) log p(target)
    owner = keep.nonzero()[:, 0]  # the sequence of each labelled position
    sums = torch.zeros(input_ids.shape[0], device=h.device).index_add(0, owner, picked)
    return sums, keep.sum(-1)


def pair_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows (2B, T), cut to the longest real row: input_ids, attention_mask, labels."""
    parts = [
        torch.cat([batch[f"{side}_{key}"] for side in SIDES])
        for key in ("input_ids", "attention_mask", "labels")
    ]
    longest = int(parts[1].sum(-1).max())
    return tuple(p[:, :longest] for p in parts)  # type: ignore[return-value]


@dataclass
class Reference:
    """Where the reference's log-probs come from: a frozen model in the engine's models ("model"), the
    policy with its adapters off ("adapters_off"), or the batch itself ("precomputed")."""

    kind: str  # model | adapters_off | precomputed
    source: str  # for the description: "a frozen copy of init_from X", ...

    @torch.no_grad()
    def logprobs(
        self, models: Mapping[str, torch.nn.Module], batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (2B,), counts (2B,)), chosen rows first; dropout off, no gradient."""
        if self.kind == "precomputed":
            sums = torch.cat([batch[f"reference_{side}"] for side in SIDES])
            return sums, (shifted(pair_inputs(batch)[2]) != IGNORE).sum(-1)
        ids, mask, labels = pair_inputs(batch)
        off = adapters_off() if self.kind == "adapters_off" else contextlib.nullcontext()
        with dropout_off(), off:
            model = models[MODEL] if self.kind == "adapters_off" else models[REFERENCE]
            return labelled_logprobs(model, ids, mask, labels)


@dataclass
class DpoStats:
    """The per-pair values a loss has seen since the last `take()` (a step's, or an evaluation's)."""

    parts: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self.parts.setdefault(key, []).append(value.detach().float().cpu())

    def take(self) -> dict[str, float]:
        if not self.parts:
            return {}
        v = {key: torch.cat(parts) for key, parts in self.parts.items()}
        self.parts = {}
        out = dpo_metrics(DpoLoss(v["losses"], v["chosen_rewards"], v["rejected_rewards"]))
        out["logps/chosen"], out["logps/rejected"] = (
            float(v["logps_chosen"].mean()),
            float(v["logps_rejected"].mean()),
        )
        if "nll" in v:
            out["nll"] = float(v["nll"].mean())
        return out


class DpoStepLoss:
    """The engine's loss: per pair the DPO loss (+ rpo_alpha x NLL per chosen token); (its sum over the
    batch's pairs, their number)."""

    def __init__(self, config: DpoConfig, reference: Reference) -> None:
        self.config, self.reference = config, reference
        self.stats = DpoStats()

    def count(self, batch: Batch) -> int:
        return int(batch["chosen_input_ids"].shape[0])

    def __call__(self, models: Mapping[str, torch.nn.Module], batch: Batch) -> tuple[torch.Tensor, Any]:
        c = self.config
        n = self.count(batch)
        sums, counts = labelled_logprobs(models[MODEL], *pair_inputs(batch))  # (2B,) each
        reference, _ = self.reference.logprobs(models, batch)
        reference = reference.to(sums.device)
        policy, ref = sums, reference
        if c.loss_type == "ipo":  # per-token averaged log-ratios (trl)
            policy, ref = sums / counts.clamp(min=1), reference / counts.clamp(min=1)
        out = dpo_loss(
            policy[:n], policy[n:], ref[:n], ref[n:],
            beta=c.beta, loss_type=c.loss_type, label_smoothing=c.label_smoothing,
        )  # fmt: skip
        losses = out.losses
        extra = {}
        if c.rpo_alpha:  # RPO: the NLL of the chosen response per token, one term per pair
            nll = -sums[:n] / counts[:n].clamp(min=1)
            losses = losses + c.rpo_alpha * nll
            extra["nll"] = nll
        self.stats.add(
            losses=losses, chosen_rewards=out.chosen_rewards, rejected_rewards=out.rejected_rewards,
            logps_chosen=sums[:n], logps_rejected=sums[n:], **extra,
        )  # fmt: skip
        return losses.sum(), n


# ---- the run --------------------------------------------------------------------------------------
@dataclass
class DpoRun:
    config: DpoConfig
    run_dir: Path
    strategy: Strategy
    precision: Precision
    tokenizer: Any
    encoding: Encoding
    splits: dict[str, PreferenceSplit]  # train, and dev when given
    model: torch.nn.Module
    reference_model: torch.nn.Module | None  # the frozen reference, unless adapters_off / precomputed
    reference: Reference
    precomputed: dict[str, torch.Tensor]  # precompute_reference: "<split>_<side>" -> (n pairs,)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: EpochBatches
    steps: int
    loss: DpoStepLoss

    def models(self) -> dict[str, torch.nn.Module]:
        """The engine's models: the policy (trained) and the frozen reference when it is a model."""
        models = {MODEL: self.model}
        if self.reference_model is not None:
            models[REFERENCE] = self.reference_model
        return models

    def train_state(self) -> TrainState:
        stateful = {"scaler": self.precision.scaler, "data": self.batches}
        return TrainState({MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, stateful)


def validate(config: DpoConfig) -> None:
    validate_preference_recipe(config, "plm dpo")
    if config.data.format == "ranked":
        raise ConfigError(
            "data.format=ranked: DPO trains on pairs; use pairs, hh or sharegpt rows (a ranking trains a "
            "reward model: plm reward)"
        )
    if config.reference and not Path(config.reference).is_dir():
        raise ConfigError(
            f"reference {config.reference} is not a checkpoint folder; set reference= to one, or null"
        )


def check(config: DpoConfig) -> RunPlan:
    """The recipe and what this start may do with its run folder, before any process starts."""
    validate(config)
    return plan_run_folder(config)


def load_reference(config: DpoConfig, tokenizer: Any) -> torch.nn.Module:
    """`reference: PATH` as a frozen causal LM; it must read the policy's tokens (the same vocabulary)."""
    theirs = load_tokenizer_folder(Path(config.reference))
    if theirs.backend.get_vocab() != tokenizer.backend.get_vocab():
        raise ConfigError(
            f"reference {config.reference} has another tokenizer than the policy ({theirs.vocab_size:,} vs "
            f"{tokenizer.vocab_size:,} tokens, or different ids): its log-probs would score other tokens; use a "
            "reference trained with the policy's tokenizer (e.g. the SFT checkpoint the policy starts from)"
        )
    with torch.random.fork_rng(
        devices=[]
    ):  # building it draws random weights: the policy's LoRA init stays as without
        model, _ = build_causal_lm(_with_init_from(config, config.reference), tokenizer)
    return model


def _with_init_from(config: DpoConfig, path: str) -> DpoConfig:
    other = copy.copy(config)
    other.init_from = path
    return other


def build_dpo_run(config: DpoConfig, strategy: Strategy, resume_from: Path | None) -> DpoRun:
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    precision = run_precision(config, strategy)
    tokenizer = sft_tokenizer(config, resume_from)  # tokenizer.path, init_from's, or the checkpoint's
    model, source = build_causal_lm(config, tokenizer)  # a base that is no causal LM fails first
    encoding = preference_encoding(config, tokenizer, causal=True)
    tokenizer.chat_template = encoding.template.source  # saved with every checkpoint
    model = fp32_master_weights(model)
    switchable = config.peft.get("method") in SWITCHABLE and config.reference is None
    reference_model = None
    if config.reference:
        reference_model, how = (
            fp32_master_weights(load_reference(config, tokenizer)),
            f"reference {config.reference}",
        )
    elif not switchable:  # the initial policy, before peft / quantization
        reference_model, how = copy.deepcopy(model), f"a frozen copy of the initial policy ({source})"
    else:
        how = f"the policy with its {config.peft['method']} modules off ({source})"
    model = quantize_base(config, model)
    model = apply_spec(model, config.peft, tokenizer)
    if switchable:
        check_switchable(model)  # adapters_off() gives exactly the base
    if resume_from is not None:
        check_resumable(model, resume_from)
    model.to(strategy.device)
    if reference_model is not None:
        reference_model.requires_grad_(False).eval().to(strategy.device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)

    splits = {name: read_preference_split(config.data, name, encoding) for name in ("train", "dev")
              if getattr(config.data, name)}  # fmt: skip
    n_train = len(splits["train"].examples)
    batches = EpochBatches(n_train, config.train.batch_size * strategy.data_parallel_size, seed=config.seed)
    steps = planned_steps(config, n_train, strategy.data_parallel_size)
    reference = Reference("adapters_off" if switchable and not config.reference else "model", how)
    precomputed: dict[str, torch.Tensor] = {}
    if config.precompute_reference:
        precomputed = precomputed_reference(
            config, strategy, precision, splits, pad_id(tokenizer), model, reference_model, reference
        )
        reference, reference_model = Reference("precomputed", f"{how}, precomputed"), None
    model = strategy.wrap(model)
    optimizer = strategy.make_optimizer(model, config.optim)
    strategy.seed_rank(config.seed)
    scheduler = build_scheduler(optimizer, steps, config.schedule)
    return DpoRun(
        config, Path(config.run_dir), strategy, precision, tokenizer, encoding, splits, model, reference_model,
        reference, precomputed, optimizer, scheduler, batches, steps, DpoStepLoss(config, reference),
    )  # fmt: skip


# ---- the precomputed reference --------------------------------------------------------------------
def fingerprint(splits: dict[str, PreferenceSplit]) -> str:
    """What the stored log-probs were computed on: every split's token ids and labels."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        for e in splits[name].examples:
            for r in e.responses:
                digest.update(json.dumps([name, r["input_ids"], r["labels"]]).encode())
    return digest.hexdigest()


def precomputed_reference(
    config: DpoConfig,
    strategy: Strategy,
    precision: Precision,
    splits: dict[str, PreferenceSplit],
    pad: int,
    model: torch.nn.Module,
    reference_model: torch.nn.Module | None,
    reference: Reference,
) -> dict[str, torch.Tensor]:
    """The reference's log-prob sums of every pair of every split, read from <run>/reference_logps.safetensors
    when it was computed on the same examples (a resume), else computed now and stored there."""
    from safetensors.torch import load_file, save

    path = Path(config.run_dir) / REFERENCE_FILE
    stamp = fingerprint(splits)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            same = (f.metadata() or {}).get("fingerprint") == stamp
        if same:
            return load_file(str(path))
    if strategy.is_main:  # before the run's log starts: this pass can take minutes
        pairs = sum(len(split.examples) for split in splits.values())
        print(
            f"precompute_reference: the reference's log-probs of {pairs:,} pairs -> {path}", file=sys.stderr
        )
    models = {MODEL: model.to(strategy.device)}
    if reference_model is not None:
        models[REFERENCE] = reference_model
    out: dict[str, torch.Tensor] = {}
    size = config.train.batch_size
    for name, split in splits.items():
        sums = []
        for start in range(0, len(split.examples), size):
            batch = collate_pairs(split.examples[start : start + size], pad)
            batch = {k: v.to(strategy.device) for k, v in batch.items()}
            with precision.autocast():
                chosen_and_rejected, _ = reference.logprobs(models, batch)
            sums.append(chosen_and_rejected.float().cpu().view(2, -1))
        both = torch.cat(sums, dim=1)  # (2, n)
        out[f"{name}_chosen"], out[f"{name}_rejected"] = both[0].contiguous(), both[1].contiguous()
    if strategy.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            f.write(save(out, metadata={"fingerprint": stamp}))
    return out


# ---- batches, a step, the dev metrics, checkpoints ----------------------------------------------------
def collate_pairs(
    examples: list[PreferenceExample], pad: int, reference: dict[str, torch.Tensor] | None = None
) -> Batch:
    """Pairs -> chosen_* and rejected_* input_ids, attention_mask, labels (B, T), padded to one length;
    with the precomputed reference (this batch's rows), reference_chosen / reference_rejected (B,)."""
    n = len(examples)
    padded = collate_responses([e.responses[0] for e in examples] + [e.responses[1] for e in examples], pad)
    batch = {
        f"{side}_{key}": value[i * n : (i + 1) * n]
        for key, value in padded.items()
        for i, side in enumerate(SIDES)
    }
    if reference is not None:
        batch.update({f"reference_{side}": reference[side] for side in SIDES})
    return batch


def batch_of(run: DpoRun, split: str, indices: list[int]) -> Batch:
    examples = run.splits[split].examples
    reference = None
    if run.precomputed:
        reference = {side: run.precomputed[f"{split}_{side}"][indices] for side in SIDES}
    return collate_pairs([examples[i] for i in indices], pad_id(run.tokenizer), reference)


def dpo_step(run: DpoRun) -> float:
    micro_batches = [
        batch_of(run, "train", run.batches.next_indices()) for _ in range(run.config.train.accumulation)
    ]
    return train_step(
        run.models(),  # the policy, and the frozen reference (no optimizer) when it is a model
        {MODEL: run.optimizer},
        {MODEL: run.scheduler},
        run.loss,  # loss_fn(models, batch) -> (sum over pairs, their number), with count(batch)
        micro_batches,
        run.strategy,
        run.precision,
        run.config.train.clip_grad,
    )


@torch.no_grad()
def evaluate(run: DpoRun, split: str = "dev") -> dict[str, float]:
    """The loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins and logps of the
    split's first eval.batches batches, dropout off."""
    loss = DpoStepLoss(run.config, run.reference)
    n, size = len(run.splits[split].examples), run.config.train.batch_size
    starts = list(range(0, n, size))[: run.config.eval.batches]
    total, count = 0.0, 0
    with dropout_off():
        for start in starts:
            batch = batch_of(run, split, list(range(start, min(start + size, n))))
            batch = {k: v.to(run.strategy.device) for k, v in batch.items()}
            with run.precision.autocast():
                summed, pairs = loss(run.models(), batch)
            total, count = total + float(summed), count + pairs
    return {"loss": total / max(count, 1), **loss.stats.take()}


def checkpoint(run: DpoRun, step: int) -> Path:
    info = {
        "recipe": to_dict(run.config),
        "chat_template": template_name(run.encoding),
        "reference": run.reference.source,
    }
    return run.strategy.save(
        run.run_dir, step, run.train_state(), run.tokenizer, info, run.config.checkpoint.keep_last
    )


# ---- the recipe ------------------------------------------------------------------------------------
def dpo(config: DpoConfig, stream=None) -> dict[str, Any]:
    """Run (or resume) the recipe; returns the final checkpoint and the dev metrics."""
    plan = check(config)
    strategy = build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))
    try:
        return _dpo(config, strategy, plan, stream)
    finally:
        strategy.close()


def _dpo(config: DpoConfig, strategy: Strategy, plan: RunPlan, stream=None) -> dict[str, Any]:
    strategy.barrier()
    if strategy.is_main:
        prepare_run_folder(plan)
    try:
        run = build_dpo_run(config, strategy, plan.resume_from)
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
        loss = dpo_step(run)
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
            metrics = {"loss": loss, **run.loss.stats.take()}  # rewards, logps: the pairs since the last log
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
    path = checkpoint(run, step)
    summary = {
        "step": step,
        "train_seconds": round(train_seconds, 2),
        "chat_template": template_name(run.encoding),
        "reference": run.reference.source,
        "examples": {name: len(split.examples) for name, split in run.splits.items()},
        "skipped": {name: split.skipped.to_dict() for name, split in run.splits.items() if split.skipped},
        "dev": evaluate(run) if has_dev else {},
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


def resume(run: DpoRun, checkpoint_path: Path) -> int:
    check_resumable(run.model, checkpoint_path)
    saved, info = load_training_state(checkpoint_path)
    run.strategy.load(checkpoint_path, run.train_state(), saved, info)
    return int(info["step"])


def describe(run: DpoRun) -> str:
    c = run.config
    model = unwrap(run.model)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    sizes = ", ".join(f"{name} {len(split.examples):,} pairs" for name, split in run.splits.items())
    skipped = [f"{name}: {split.skipped}" for name, split in run.splits.items() if split.skipped]
    loss = f"{c.loss_type}, beta {c.beta}" + (
        f", label smoothing {c.label_smoothing}" if c.label_smoothing else ""
    )
    loss += f", + {c.rpo_alpha} x NLL (RPO)" if c.rpo_alpha else ""
    epochs = run.steps * c.train.accumulation * c.train.batch_size * run.strategy.data_parallel_size
    return (
        f"run {c.name} -> {run.run_dir}\n"
        f"data: {c.data.format}; {sizes}" + (f" ({'; '.join(skipped)})" if skipped else "") + "\n"
        f"chat template: {template_name(run.encoding)}; max_length {c.data.max_length}\n"
        f"policy: {type(model).__name__}, {n_params:,} parameters ({trained:,} trained); reference: "
        f"{run.reference.source}\n"
        f"loss: {loss}\n"
        f"train: {run.steps} steps x {c.train.accumulation} x {c.train.batch_size} pairs "
        f"({epochs / len(run.splits['train'].examples):.2f} epochs) on {run.strategy.device} in "
        f"{run.precision.name}; lr {c.optim.lr}"
    )


__all__ = ["DpoConfig", "DpoStepLoss", "check", "dpo", "validate"]
