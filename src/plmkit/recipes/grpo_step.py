"""One GRPO step: the generation batch (sampled completions, their rewards and group advantages, the
log-probs the loss needs) and the loss on the engine (plmkit.train.loop.train_step).

    sample_generation_batch(run, i)  prompts (seeded epochs) -> num_generations completions each (rollouts,
                                     KV cache, seed of batch i) -> rewards per function -> weighted sum ->
                                     group advantages; old log-probs (num_iterations > 1) and the
                                     reference's (beta > 0) by a no-grad forward
    grpo_step(run, step)             a new generation batch when the last is used up, then one optimizer
                                     step over all of its micro-batches with GrpoLoss

The recipe around it (config checks, building the run, the loop, dev reward, checkpoints) is
plmkit.recipes.grpo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from plmkit.align.grpo import frac_reward_zero_std, group_advantages, grpo_count, grpo_loss
from plmkit.generation import GenerationConfig
from plmkit.model.dropout import dropout_off
from plmkit.recipes.grpo_config import GrpoConfig
from plmkit.recipes.grpo_inputs import Prompt
from plmkit.recipes.grpo_rewards import combine, score
from plmkit.recipes.rollouts import Rollouts, sample_rollouts
from plmkit.train.distributed.base import Strategy
from plmkit.train.loop import train_step
from plmkit.weights import unwrap

if TYPE_CHECKING:
    from plmkit.recipes.grpo import GrpoRun

POLICY = "model"  # the trained policy: the checkpoint's own model
Batch = dict[str, torch.Tensor]


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

    # input_ids, attention_mask, response_mask (N, T), advantages (N,); old_logprobs, ref_logprobs (N, T)
    # when the run needs them; on the CPU
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
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
