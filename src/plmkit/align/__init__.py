"""plmkit.align: the losses and advantages of preference and RL training, as pure functions on tensors.

No models, no I/O: the recipes (reward, dpo, ppo, grpo) run the models and pass log-probs, scores and
masks in. Losses that train return `(loss_sum, count)` (the engine's contract, plmkit/train/loop.py) or
per-example losses `(B,)` the caller sums.

    reward.py  pairwise reward-model loss (margin, centering), K-way ranking pairs, pair accuracy
    dpo.py     DPO (sigmoid / cDPO label smoothing, hinge, IPO) and its reward metrics
    kl.py      per-token KL estimators, masked mean / var / whitening, adaptive and fixed KL controllers
    ppo.py     per-token rewards (score - KL), GAE, clipped policy and value losses
    grpo.py    group-relative advantages and the GRPO / BNPO / Dr. GRPO / DAPO objectives
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "DpoLoss": "plmkit.align.dpo",
    "dpo_loss": "plmkit.align.dpo",
    "dpo_metrics": "plmkit.align.dpo",
    "frac_reward_zero_std": "plmkit.align.grpo",
    "grpo_count": "plmkit.align.grpo",
    "group_advantages": "plmkit.align.grpo",
    "grpo_loss": "plmkit.align.grpo",
    "AdaptiveKLController": "plmkit.align.kl",
    "FixedKLController": "plmkit.align.kl",
    "kl_penalty": "plmkit.align.kl",
    "masked_mean": "plmkit.align.kl",
    "masked_var": "plmkit.align.kl",
    "masked_whiten": "plmkit.align.kl",
    "gae": "plmkit.align.ppo",
    "policy_loss": "plmkit.align.ppo",
    "token_rewards": "plmkit.align.ppo",
    "value_loss": "plmkit.align.ppo",
    "pair_accuracy": "plmkit.align.reward",
    "ranking_pairs": "plmkit.align.reward",
    "reward_pair_loss": "plmkit.align.reward",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
