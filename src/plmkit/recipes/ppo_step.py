"""One PPO step of the recipe, in its two phases: experience (sample completions, score them, advantages)
and learning (epochs of shuffled mini-batches, one optimizer step each on the engine, PTX in the same loss).

    experience = make_experience(run, step)   # no gradients: rollouts, log-probs, values, rewards, GAE
    metrics = learn(run, experience, step)    # ppo.epochs x (ppo.batch_size / ppo.mini_batch_size) steps

The tensors of the experience are aligned with the rollouts' response mask (plmkit.recipes.rollouts): the
log-prob, value, reward and advantage at column t belong to the response token at column t.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.align.kl import kl_penalty, masked_mean, masked_whiten
from plmkit.align.ppo import gae, policy_loss, token_rewards, value_loss
from plmkit.data.sampler import derive_seed
from plmkit.generation import GenerationConfig
from plmkit.model.dropout import dropout_off
from plmkit.recipes.grpo_rewards import score
from plmkit.recipes.ppo_inputs import ptx_batch
from plmkit.recipes.rollouts import Rollouts, frozen_logprobs, response_logprobs, sample_rollouts
from plmkit.train.loop import train_step

if TYPE_CHECKING:
    from plmkit.recipes.ppo import PpoRun

ACTOR, CRITIC = "actor", "critic"  # the trained models, in the engine's dict (the actor is the checkpoint's)
Batch = dict[str, torch.Tensor]
ROLLOUT_KEYS = ("input_ids", "attention_mask", "response_mask")


def critic_values(critic: nn.Module, batch: Batch) -> torch.Tensor:
    """(B, T) fp32: the value of the state each response token is chosen in (the critic's output at the
    token before it), 0.0 off the response mask."""
    values = critic(batch["input_ids"], batch["attention_mask"]).values  # (B, T) at every position
    return F.pad(values[:, :-1], (1, 0)) * batch["response_mask"]


class PpoLoss:
    """The engine's loss of one micro-batch: clipped policy loss + vf_coef · clipped value loss, summed
    over the response tokens (count: their number), + ptx_weight · the pre-training NLL summed over the
    micro-batch's pre-training tokens, where ptx_weight = ptx.coef · (response tokens / pre-training
    tokens of the mini-batch): the engine divides by the response tokens, so the step's loss is
    policy mean + vf_coef · value mean + ptx.coef · NLL mean, in one backward per micro-batch."""

    def __init__(self, clip_eps: float, value_clip: float | None, vf_coef: float) -> None:
        self.clip_eps, self.value_clip, self.vf_coef = clip_eps, value_clip, vf_coef
        self.records: list[dict[str, float]] = []  # per micro-batch, read by `learn`

    def count(self, batch: Batch) -> int:
        return int(batch["response_mask"].sum())

    def __call__(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, Any]:
        rows = {k: batch[k] for k in ROLLOUT_KEYS}
        mask = batch["response_mask"]
        logprobs, entropy = response_logprobs(models[ACTOR], rows, with_entropy=True)
        values = critic_values(models[CRITIC], rows)
        p_sum, count, p_stats = policy_loss(
            logprobs, batch["old_logprobs"], batch["advantages"], mask, self.clip_eps
        )
        v_sum, _, v_stats = value_loss(values, batch["old_values"], batch["returns"], mask, self.value_clip)
        total = p_sum + self.vf_coef * v_sum
        n = max(int(count), 1)
        record = {
            "tokens": float(count),
            "policy_loss": float(p_sum.detach()) / n,
            "value_loss": float(v_sum.detach()) / n,
            "entropy": float(entropy.sum()) / n,
            "clipfrac": p_stats["clipfrac"],
            "approx_kl": p_stats["approx_kl"],
            "value_clipfrac": v_stats["clipfrac"],
            "value_error": float((((values - batch["returns"]) * mask) ** 2).sum().detach()) / n,
        }
        if "ptx_input_ids" in batch:
            out = models[ACTOR](batch["ptx_input_ids"], labels=batch["ptx_labels"])
            total = total + batch["ptx_weight"] * out.loss_sum
            record["ptx_loss"] = float(out.loss_sum.detach()) / max(int(out.targets), 1)
        self.records.append(record)
        return total, count


# ---- experience ---------------------------------------------------------------------------------------
def generation_config(run: PpoRun, greedy: bool = False) -> GenerationConfig:
    g = run.config.generation
    if greedy:
        return GenerationConfig(max_new_tokens=g.max_new_tokens, eos_token_id=run.eos_ids)
    return GenerationConfig(
        do_sample=True,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        eos_token_id=run.eos_ids,
    )


@torch.no_grad()
def in_chunks(function, batch: Batch, size: int) -> torch.Tensor:
    """function(rows) over row chunks of `batch`, concatenated (bounded memory for the scoring passes)."""
    n = batch["input_ids"].shape[0]
    return torch.cat([function({k: v[i : i + size] for k, v in batch.items()}) for i in range(0, n, size)])


def reference_logprobs(run: PpoRun, batch: Batch) -> torch.Tensor:
    if run.models.reference is not None:
        return frozen_logprobs(run.models.reference, batch)
    from plmkit.peft.disable import adapters_off

    with adapters_off(run.actor):  # the shared base: the actor without its adapters
        return frozen_logprobs(run.actor, batch)


def reward_scores(run: PpoRun, batch: Batch) -> torch.Tensor:
    """(B,) the frozen reward model's raw score at each completion's last token."""
    with torch.no_grad(), dropout_off():
        return run.models.reward(batch["input_ids"], batch["attention_mask"]).scores.float()


def shaped_scores(run: PpoRun, raw: torch.Tensor, ended_with_eos: torch.Tensor) -> torch.Tensor:
    """The score PPO maximises: normalised with the reward model's statistics, minus the missing-EOS
    penalty, clipped."""
    p = run.config.ppo
    scores = (raw - run.models.reward_mean) / run.models.reward_std
    if p.missing_eos_penalty:
        scores = scores - p.missing_eos_penalty * (~ended_with_eos).float()
    if p.reward_clip:
        scores = scores.clamp(-p.reward_clip, p.reward_clip)
    return scores


def completion_texts(run: PpoRun, rollouts: Rollouts) -> list[str]:
    return [run.tokenizer.decode(ids, skip_special_tokens=True) for ids in rollouts.responses()]


def verifier_accuracy(run: PpoRun, prompts: list, rollouts: Rollouts) -> float | None:
    """The mean verifier score of the completions (None without a verifier)."""
    if not run.verifiers:
        return None
    rows = [prompts[int(i)] for i in rollouts.prompt_index]
    columns = {key: [p.columns.get(key) for p in rows] for key in rows[0].columns}
    per_function = score(
        run.verifiers, [p.text for p in rows], completion_texts(run, rollouts), rollouts.responses(), columns
    )
    return float(per_function.nan_to_num(0.0).mean())


def make_experience(run: PpoRun, step: int) -> tuple[Batch, dict[str, float]]:
    """Sample ppo.batch_size completions of the next prompts and turn them into training targets."""
    config, p = run.config, run.config.ppo
    started = time.perf_counter()
    prompts = [run.prompts[i] for i in run.prompt_batches.next_indices()]
    rollouts = sample_rollouts(
        run.actor,
        [q.ids for q in prompts],
        generation_config(run),
        n=config.samples_per_prompt,
        seed=derive_seed(config.seed, step, 11) % 2**62,
    )
    batch = rollouts.batch()
    size = config.train.batch_size
    mask = batch["response_mask"]
    old_logprobs = in_chunks(lambda b: frozen_logprobs(run.actor, b), batch, size)
    ref_logprobs = in_chunks(lambda b: reference_logprobs(run, b), batch, size)
    with dropout_off():
        old_values = in_chunks(lambda b: critic_values(run.critic, b), batch, size)
    raw = in_chunks(lambda b: reward_scores(run, b), batch, size)
    scores = shaped_scores(run, raw, rollouts.ended_with_eos)
    kl = kl_penalty(old_logprobs, ref_logprobs, p.kl_estimator) * mask  # (B, T)
    rewards = token_rewards(scores, kl, mask, run.kl_controller.value)
    advantages, returns = gae(rewards, old_values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = masked_whiten(advantages, mask) * mask
    experience = {
        **batch,
        "old_logprobs": old_logprobs,
        "old_values": old_values,
        "advantages": advantages,
        "returns": returns,
    }
    kl_per_completion = kl.sum(dim=1).mean().item()
    metrics = {
        "reward": raw.mean().item(),
        "score": scores.mean().item(),
        "kl": kl_per_completion,
        "kl_coef": run.kl_controller.value,
        "response_length": rollouts.response_lengths.float().mean().item(),
        "eos_fraction": rollouts.ended_with_eos.float().mean().item(),
        "value_mean": masked_mean(old_values, mask).item(),
        "rollout_seconds": rollouts.rollout_seconds,
    }
    accuracy = verifier_accuracy(run, prompts, rollouts)
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    run.kl_controller.update(kl_per_completion, rollouts.input_ids.shape[0])
    metrics["experience_seconds"] = time.perf_counter() - started
    return experience, metrics


# ---- learning -----------------------------------------------------------------------------------------
def rows_of(experience: Batch, rows: torch.Tensor) -> Batch:
    """The experience's rows, cut to their longest sequence (right padded: the columns after it are padding)."""
    out = {k: v[rows] for k, v in experience.items()}
    width = int(out["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in out.items()}


def with_ptx(run: PpoRun, micro_batches: list[Batch]) -> None:
    """Give every micro-batch ptx.batch_size pre-training blocks and the weight that makes the step's loss
    ptx.coef x the mini-batch's mean NLL per pre-training token (see PpoLoss)."""
    blocks = [ptx_batch(run.ptx_data.next_batch()) for _ in micro_batches]
    response_tokens = sum(int(b["response_mask"].sum()) for b in micro_batches)
    ptx_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in blocks)
    weight = torch.tensor(run.config.ptx.coef * response_tokens / max(ptx_tokens, 1))
    for micro, ptx in zip(micro_batches, blocks, strict=True):
        micro.update(ptx_input_ids=ptx["input_ids"], ptx_labels=ptx["labels"], ptx_weight=weight)


def learn(run: PpoRun, experience: Batch, step: int) -> dict[str, float]:
    """ppo.epochs passes over the experience in shuffled mini-batches: one engine step each."""
    config, p = run.config, run.config.ppo
    started = time.perf_counter()
    n = experience["input_ids"].shape[0]
    generator = torch.Generator().manual_seed(derive_seed(config.seed, step, 13) % 2**62)
    run.loss.records.clear()
    losses = []
    for _ in range(p.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, p.mini_batch_size):
            rows = order[start : start + p.mini_batch_size]
            size = config.train.batch_size
            micro = [rows_of(experience, rows[i : i + size]) for i in range(0, len(rows), size)]
            if config.ptx.coef:
                with_ptx(run, micro)
            losses.append(
                train_step(
                    {ACTOR: run.actor, CRITIC: run.critic},
                    run.optimizers,
                    run.schedulers,
                    run.loss,
                    micro,
                    run.strategy,
                    run.precision,
                    config.train.clip_grad,
                )
            )
            if run.ema is not None:
                run.ema.update(run.actor)
    records = run.loss.records
    tokens = sum(r["tokens"] for r in records) or 1.0
    metrics = {
        key: sum(r[key] * r["tokens"] for r in records) / tokens for key in records[0] if key != "tokens"
    }
    if "ptx_loss" in metrics:  # per pre-training token: a plain mean over the equal-sized micro-batches
        metrics["ptx_loss"] = sum(r["ptx_loss"] for r in records) / len(records)
    metrics["loss"] = sum(losses) / len(losses)
    metrics["learn_seconds"] = time.perf_counter() - started
    return metrics
