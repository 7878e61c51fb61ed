"""Preference training steps: plmkit (`plm reward`, `plm dpo`) against trl 1.16's RewardTrainer and
DPOTrainer on the same model, the same batches and the same hyper-parameters.

    python benchmarks/bench_align.py [--family gpt2|llama] [--layers 4] [--d-model 256] [--heads 4]
                                     [--vocab 8192] [--pairs 8] [--prompt 96] [--response 32]
                                     [--rounds 5] [--threads 1] [--out benchmarks/results] [--tiny]

Same weights (BENCHMARKING.md rule 1): a transformers model (GPT-2 or LLaMA layout, seed 0, every
parameter nudged) is saved with save_pretrained and loaded by both sides. The reward model: trl's is
AutoModelForSequenceClassification(num_labels=1) of that folder (the score of the last non-pad token);
plmkit's is the RewardModel `plm reward` builds on the same body (plmkit.recipes.reward_model), its score
row copied from transformers' `score`. DPO: the causal LM and a frozen copy as the reference on both sides.

Same batches: fixed random prompts (`--prompt` tokens, lengths varied by up to a quarter) and responses,
collated by each side's own collator (trl's DataCollatorForPreference, plmkit's collate_preferences /
collate_pairs) from the same token ids. Before timing: scores / logits within 1e-4 (fp32), the step-1
losses within 1e-4, and for DPO the step-2 losses too (step 1 is ln 2 on both sides whatever the
gradients; step 2 shows they were the same). A failed check leaves the row untimed.

A step is what each runs per optimizer step: plmkit.train.loop.train_step with the recipe's loss
(reward.RewardLoss, dpo.DpoStepLoss against the frozen reference) against trl's training_step +
accelerator.clip_grad_norm_ + optimizer.step + lr_scheduler.step + zero_grad (AdamW, lr 1e-5, constant
schedule, clip 1.0, no weight decay, dropout off on both sides). Interleaved rounds in rotating order
with per-block contention shares; the median of per-round ratios (trl's time over plmkit's: > 1 means
plmkit is faster). The limit: the fp32 GEMM peak (4096^3 here, the same run) and each side's achieved
FLOP/s: 6 N per token for the reward model, 6 N (policy) + 2 N (reference forward) for DPO, N without
the position table (BENCHMARKING.md), tokens = the padded batch.

Prints one JSON line per part; writes <out>/align-<cpu>-<date>.json (never over an earlier one).
--tiny: a 2-layer, 32-wide model on a few short pairs; tests this script, not a figure (give it --out).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from benchkit import (  # noqa: E402
    limits,
    report,
    rows,  # noqa: E402
)
from benchkit import models as M  # noqa: E402
from benchkit import rounds as R  # noqa: E402

GOALS = {"reward": 1.2, "dpo": 1.3}
CHECK_ATOL = 1e-4
LR = 1e-5
PAD = 0  # never a real token of the batches (those are drawn from 5..vocab)


# ---- inputs -------------------------------------------------------------------------------------------
def save_model(family: str, shape: M.Shape, folder: Path) -> Path:
    """The causal LM (benchkit's reference layout, nudged) with pad id PAD, saved with save_pretrained."""
    M.save_reference(family, shape, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = PAD
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def hf_tokenizer(vocab: int):
    """A word-level tokenizer "t0 t1 ..." for trl's constructors (the batches are ids; this only has to exist)."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", eos_token="t2", unk_token="t1")


def make_pairs(n: int, prompt: int, response: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """n pairs of (prompt_ids, chosen_ids, rejected_ids), lengths varied by up to a quarter."""
    g = torch.Generator().manual_seed(seed)

    def ids(length: int) -> list[int]:
        varied = length - int(torch.randint(0, max(1, length // 4), (1,), generator=g))
        return torch.randint(5, vocab, (max(1, varied),), generator=g).tolist()

    return [
        {"prompt_ids": ids(prompt), "chosen_ids": ids(response), "rejected_ids": ids(response)}
        for _ in range(n)
    ]


def text_dataset(n: int = 2):
    import datasets

    rows_ = [{"prompt": "t5 t6", "chosen": "t7 t8", "rejected": "t9"} for _ in range(n)]
    return datasets.Dataset.from_list(rows_)


# ---- plmkit's side ------------------------------------------------------------------------------------
class PlmkitSteps:
    """plmkit.train.loop.train_step with a recipe's loss over a fixed list of batches (one step each)."""

    def __init__(self, models: dict, loss, batches: list[dict]) -> None:
        from plmkit.train.config import OptimConfig, ScheduleConfig
        from plmkit.train.distributed.base import Strategy
        from plmkit.train.optim import build_scheduler
        from plmkit.train.precision import Precision

        self.models, self.loss, self.batches = models, loss, batches
        self.strategy = Strategy()
        optim = OptimConfig(lr=LR, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
        self.optimizer = self.strategy.make_optimizer(models["model"].train(), optim)
        self.scheduler = build_scheduler(self.optimizer, 10**6, ScheduleConfig(kind="constant"))
        self.precision = Precision("fp32", torch.device("cpu"))
        self.i = 0

    def __call__(self) -> float:
        from plmkit.train.loop import train_step

        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return train_step(
            self.models, {"model": self.optimizer}, {"model": self.scheduler}, self.loss, [batch],
            self.strategy, self.precision, 1.0,
        )  # fmt: skip


# ---- trl's side ---------------------------------------------------------------------------------------
class TrlSteps:
    """What trl's Trainer loop runs per optimizer step over a fixed list of batches."""

    def __init__(self, trainer, batches: list[dict]) -> None:
        self.trainer, self.batches, self.i = trainer, batches, 0
        trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop; training_step divides by it
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        trainer.model.train()

    def __call__(self) -> float:
        t = self.trainer
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss = t.training_step(t.model, dict(batch))
        t.accelerator.clip_grad_norm_(t.model.parameters(), t.args.max_grad_norm)
        t.optimizer.step()
        t.lr_scheduler.step()
        t.model.zero_grad()
        return float(loss)


def trl_arguments(kind: str, out_dir: Path):
    import trl

    common = dict(
        output_dir=str(out_dir), per_device_train_batch_size=2, learning_rate=LR, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, seed=0, bf16=False, fp16=False, report_to="none", use_cpu=True, save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    if kind == "reward":
        return trl.RewardConfig(**common, center_rewards_coefficient=None)
    return trl.DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], max_length=None)


def quiet_trl():
    """trl and transformers print and warn at construction; a benchmark's output is its JSON lines."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(sys.stderr))
    return stack


# ---- the reward model ---------------------------------------------------------------------------------
def reward_sides(folder: Path, vocab: int):
    """(plmkit's RewardModel, trl's RewardTrainer) from the same folder and score row."""
    import transformers as T
    import trl

    from plmkit.model.hf import load_hf
    from plmkit.recipes.reward_model import as_reward_model

    with quiet_trl():
        hf = T.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, attn_implementation="sdpa"
        )
        hf.config.pad_token_id = PAD
        base, _ = load_hf(folder)
        ours = as_reward_model(base, str(folder))
        with torch.no_grad():
            ours.value_head.score.weight.copy_(hf.score.weight)
            ours.value_head.score.bias.zero_()
        trainer = trl.RewardTrainer(
            model=hf, args=trl_arguments("reward", folder / "trl"), train_dataset=text_dataset(),
            processing_class=hf_tokenizer(vocab),
        )  # fmt: skip
    return ours, trainer


def reward_batches(pairs_per_batch: list[list[dict]]):
    """(plmkit batches, trl batches) of the same pairs: prompt + response ids per response."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from plmkit.recipes.preference_data import PreferenceExample
    from plmkit.recipes.reward import collate_preferences

    collator = DataCollatorForPreference(pad_token_id=PAD)
    ours, theirs = [], []
    for pairs in pairs_per_batch:
        examples = [
            PreferenceExample(
                [{"input_ids": p["prompt_ids"] + p[k]} for k in ("chosen_ids", "rejected_ids")], None, ""
            )
            for p in pairs
        ]
        ours.append(collate_preferences(examples, PAD))
        theirs.append(
            collator([{k: p["prompt_ids"] + p[k] for k in ("chosen_ids", "rejected_ids")} for p in pairs])
        )
    return ours, theirs


def reward_checks(ours, trainer, plm_batches, trl_batches) -> dict:
    from plmkit.recipes.reward import RewardLoss, response_scores

    hf = trainer.model
    a, b = copy.deepcopy(ours).eval(), copy.deepcopy(hf).eval()
    with torch.no_grad():
        mine = response_scores(a, plm_batches[0])  # (2B,) chosen, rejected of each pair
        theirs = b(**trl_batches[0]).logits.squeeze(-1)  # (2B,) every chosen, then every rejected
    n = len(theirs) // 2
    mine = torch.stack([mine[0::2], mine[1::2]]).reshape(-1)
    scores = float((mine - theirs).abs().max())
    losses = [PlmkitSteps({"model": copy.deepcopy(ours)}, RewardLoss(), plm_batches)()]
    trl_copy = copy.copy(trainer)
    trl_copy.model = copy.deepcopy(hf)
    trl_copy.model_wrapped = trl_copy.model
    trl_copy.optimizer = trl_copy.lr_scheduler = None
    losses.append(TrlSteps(trl_copy, trl_batches)())
    out = {
        "scores_max_diff": scores,
        "pairs": n,
        "step1_loss_plmkit": losses[0],
        "step1_loss_trl": losses[1],
        "step1_loss_diff": abs(losses[0] - losses[1]),
    }
    out["passed"] = scores <= CHECK_ATOL and out["step1_loss_diff"] <= CHECK_ATOL
    return out


# ---- DPO ----------------------------------------------------------------------------------------------
def dpo_sides(folder: Path, vocab: int):
    """(plmkit's policy and frozen reference, trl's DPOTrainer) from the same folder."""
    import transformers as T
    import trl

    from plmkit.model.hf import load_hf

    with quiet_trl():
        hf = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
        reference = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
        policy, _ = load_hf(folder)
        trainer = trl.DPOTrainer(
            model=hf, ref_model=reference, args=trl_arguments("dpo", folder / "trl"), train_dataset=text_dataset(),
            processing_class=hf_tokenizer(vocab),
        )  # fmt: skip
    ours_reference = copy.deepcopy(policy).requires_grad_(False).eval()
    return policy, ours_reference, trainer


def dpo_batches(pairs_per_batch: list[list[dict]]):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from plmkit.recipes.dpo import collate_pairs
    from plmkit.recipes.preference_data import PreferenceExample

    collator = DataCollatorForPreference(pad_token_id=PAD)
    ours, theirs = [], []
    for pairs in pairs_per_batch:
        examples = []
        for p in pairs:
            prompt = p["prompt_ids"]
            responses = [
                {"input_ids": prompt + p[k], "labels": [-100] * len(prompt) + p[k]}
                for k in ("chosen_ids", "rejected_ids")
            ]
            examples.append(PreferenceExample(responses, None, ""))
        ours.append(collate_pairs(examples, PAD))
        theirs.append(collator(pairs))
    return ours, theirs


def dpo_loss_fn():
    from plmkit.recipes.dpo import DpoStepLoss, Reference
    from plmkit.recipes.dpo_config import DpoConfig

    return DpoStepLoss(DpoConfig(beta=0.1), Reference("model", "a frozen copy"))


def dpo_checks(policy, reference, trainer, plm_batches, trl_batches) -> dict:
    hf = trainer.model
    a, b = copy.deepcopy(policy).eval(), copy.deepcopy(hf).eval()
    inputs = {"input_ids": trl_batches[0]["input_ids"], "attention_mask": trl_batches[0]["attention_mask"]}
    with torch.no_grad():
        logits = float((a(**inputs).logits - b(**inputs).logits).abs().max())
    mine = PlmkitSteps({"model": copy.deepcopy(policy), "reference": reference}, dpo_loss_fn(), plm_batches)
    trl_copy = copy.copy(trainer)
    trl_copy.model = copy.deepcopy(hf)
    trl_copy.model_wrapped = trl_copy.model
    trl_copy.optimizer = trl_copy.lr_scheduler = None
    theirs = TrlSteps(trl_copy, trl_batches)
    losses = [(mine(), theirs()), (mine(), theirs())]
    out = {
        "logits_max_diff": logits,
        "step1_loss_plmkit": losses[0][0],
        "step1_loss_trl": losses[0][1],
        "step2_loss_plmkit": losses[1][0],
        "step2_loss_trl": losses[1][1],
        "step1_loss_diff": abs(losses[0][0] - losses[0][1]),
        "step2_loss_diff": abs(losses[1][0] - losses[1][1]),
    }
    out["passed"] = logits <= CHECK_ATOL and max(out["step1_loss_diff"], out["step2_loss_diff"]) <= CHECK_ATOL
    return out


# ---- the comparison -----------------------------------------------------------------------------------
def compare_row(section: str, label: str, checks: dict, ours, theirs, plan, tokens: int, flops_per: int,
                n_params: int, peak: float) -> dict:  # fmt: skip
    if not checks["passed"]:
        return rows.not_timed(section, label, "failed", "the checks before timing failed", check=checks)
    comparison = R.compare({"trl": theirs, "plmkit": ours}, plan)
    r = rows.timed(section, label, label, comparison, "plmkit", "trl", "ms/step", reference_name="trl 1.16",
                   check=checks, tokens_per_step=tokens, parameters=n_params)  # fmt: skip
    achieved = {
        side: flops_per * n_params * tokens / (r[side] / 1000) / 1e9 for side in ("plmkit", "reference")
    }
    r["limit"] = {
        "name": "fp32 GEMM peak",
        "peak_gflops": peak,
        "achieved_gflops": achieved["plmkit"],
        "reference_achieved_gflops": achieved["reference"],
        "fraction_of_peak": achieved["plmkit"] / peak,
        "flops_per_token": f"{flops_per}N",
    }
    r["rounds"] = comparison["rounds"]
    return rows.ratio_at_least(r, GOALS[section], "trl 1.16")


def main(argv: list[str] | None = None) -> int:
    """stdout carries the JSON lines only: whatever the libraries print goes to stderr."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return run(argv, out)


def run(argv: list[str] | None, out) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per step")
    parser.add_argument("--prompt", type=int, default=96, help="prompt tokens (varied by up to a quarter)")
    parser.add_argument(
        "--response", type=int, default=32, help="response tokens (varied by up to a quarter)"
    )
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results (none with --tiny)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny model and plan: tests this script only")
    args = parser.parse_args(argv)
    if args.out is None and not args.tiny:
        args.out = Path(__file__).resolve().parent / "results"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        args.layers, args.d_model, args.heads, args.vocab = 2, 32, 2, 64
        args.pairs, args.prompt, args.response, args.batches = 2, 8, 4, 2
    shape = M.Shape(
        layers=args.layers, d_model=args.d_model, heads=args.heads, vocab=args.vocab, positions=512
    )
    plan = (
        R.Plan(rounds=1, max_rounds=2, block_s=0.05, wait_s=0, warmup=1)
        if args.tiny
        else R.Plan(rounds=args.rounds, max_rounds=2 * args.rounds, block_s=2.0, budget_s=900.0)
    )
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    import transformers
    import trl

    machine = limits.machine()
    cpu_model = machine["cpu"]["model"]
    log(
        f"machine: {cpu_model}; torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    peak = (
        limits.gemm_peak(torch.float32, 128, 1, 0.02)
        if args.tiny
        else limits.gemm_peak(torch.float32, 4096, 3, 2.0)
    )
    log(f"  GEMM fp32 peak: {peak:.1f} GFLOP/s")
    pairs = [
        make_pairs(args.pairs, args.prompt, args.response, args.vocab, seed) for seed in range(args.batches)
    ]
    label = f"{args.family} {shape.label()} vocab {args.vocab}, {args.pairs} pairs of ~{args.prompt}+{args.response} tokens"
    result: dict = {
        "benchmark": "align",
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "gemm_fp32_gflops": peak,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(args.family, shape, Path(tmp) / "model")
        n_params = M.model_flops_parameters(transformers.AutoModelForCausalLM.from_pretrained(folder))
        # the reward model
        ours, trainer = reward_sides(folder, args.vocab)
        plm_batches, trl_batches = reward_batches(pairs)
        checks = reward_checks(ours, trainer, plm_batches, trl_batches)
        log(f"reward model: checks {json.dumps(checks)}")
        from plmkit.recipes.reward import RewardLoss

        tokens = int(trl_batches[0]["input_ids"].numel())
        row = compare_row("reward", f"reward step {label}", checks, PlmkitSteps({"model": ours}, RewardLoss(), plm_batches),
                          TrlSteps(trainer, trl_batches), plan, tokens, 6, n_params, peak)  # fmt: skip
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), file=out, flush=True)
        del ours, trainer
        # DPO
        policy, reference, trainer = dpo_sides(folder, args.vocab)
        plm_batches, trl_batches = dpo_batches(pairs)
        checks = dpo_checks(policy, reference, trainer, plm_batches, trl_batches)
        log(f"dpo: checks {json.dumps(checks)}")
        tokens = int(trl_batches[0]["input_ids"].numel())
        mine = PlmkitSteps({"model": policy, "reference": reference}, dpo_loss_fn(), plm_batches)
        row = compare_row("dpo", f"dpo step {label}", checks, mine, TrlSteps(trainer, trl_batches), plan, tokens, 8,
                          n_params, peak)  # fmt: skip
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), file=out, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = report.output_stem(args.out, "align-" + limits.slug(cpu_model))
        path = stem.with_suffix(".json")
        report.write_text(path, json.dumps(result, indent=1) + "\n")
        log(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
