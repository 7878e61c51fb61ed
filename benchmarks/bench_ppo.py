"""A PPO update: plmkit's `plm ppo` update against trl 1.12's PPOTrainer, side by side in one run.

    python benchmarks/bench_ppo.py [--threads 1] [--rounds 3] [--out benchmarks/results] [--tiny]
                                   [--trl-python /tmp/venv-trl-ppo/bin/python]

One update = the rollout of a batch (sample `batch` completions of `response_length` tokens at temperature
1, then the experience: log-probs, reference log-probs, values, reward-model scores, per-token KL rewards,
GAE, whitened advantages) + `epochs` PPO epochs over the batch in mini-batches (clipped policy loss +
vf_coef x clipped value loss, AdamW). plmkit: make_experience + learn of plmkit.recipes.ppo_step on a
PpoRun built from the recipe's config; trl: one update of PPOTrainer.train(), held between updates by a
callback, in a subprocess of the virtualenv that holds trl 1.12 (benchmarks/ppo_trl_side.py; trl 1.13
dropped PPOTrainer, plmkit's environment has a newer trl).

Same on both sides: the weights (a tiny LLaMA built by transformers, saved with save_pretrained; the reward
model and the critic's initial weights a LlamaForSequenceClassification on its body, which plmkit loads as
its RewardModel), the tokenizer, the prompt length (every prompt has exactly prompt_length tokens: no
padding on either side), the response length (no EOS stop on either side: every response has
response_length tokens, so the work is equal), batch, micro-batch, mini-batch, epochs, kl_coef (k1),
clip ranges, vf_coef, gamma, lam, learning rate, AdamW settings; raw reward scores (plmkit's
normalisation and clipping are off, trl has neither); no gradient clipping (trl's PPO loop clips none).
Before timing (BENCHMARKING.md rule 1): the policy's and the reference's log-probs, the critic's values
and the reward model's scores of the same fixed query-responses agree within 1e-4.

What differs (the implementations, kept as they are): trl keeps the sampling logits as the old log-probs,
plmkit recomputes them with one more forward; trl steps one AdamW over policy + value model, plmkit one per
model; trl scores the rollout in chunks of the whole batch, plmkit in micro-batches. trl's
gradient_accumulation x mini-batch wiring steps the optimizer once per gradient_accumulation micro-batches,
so the mini-batch is the whole batch here (num_mini_batches 1): one optimizer step per epoch on each side.

Timing: interleaved rounds with rotating order, contention measured with trl's process CPU counted as the
benchmark's (benchkit.rounds, benchkit.contention.count_worker); the ratio is trl's seconds per update /
plmkit's; speedup_cpu_time is the same ratio of the median CPU seconds per update of each process (less
sensitive to what other processes take). The split (generation, the rest of the experience, learning) is
the median over the timed updates (trl's experience includes its two gc.collect() calls, gc_seconds); the limits: generation tokens/s and learning FLOP/s (6 N tokens per trained model, per epoch)
against the fp32 GEMM peak measured in the same run.

The trl virtualenv (never plmkit's: trl 1.12 is older than the trl plmkit's tests use; CPU torch):
    python3 -m venv /tmp/venv-trl-ppo && /tmp/venv-trl-ppo/bin/pip install torch==2.13.0 trl==1.12.0 \
        transformers==5.25.0 accelerate==1.16.0 datasets==5.2.0
(the transformers / accelerate / datasets of plmkit's environment, so both sides run the same model code).
Without it the plmkit side is timed alone and the row says why.
Writes one JSON line per comparison to stdout and ppo-<cpu>-<date>.json to --out (none with --tiny).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchkit and bench_grpo, when run as a script

import torch  # noqa: E402

TRL_PYTHON = Path(os.environ.get("PLMKIT_TRL_PPO_PYTHON", "/tmp/venv-trl-ppo/bin/python"))
TRL_VERSION = "1.12"  # the last trl with PPOTrainer (trl.experimental.ppo)
CHECK_ATOL = 1e-4


@dataclass(frozen=True)
class Setup:
    layers: int = 2
    d_model: int = 128
    heads: int = 4
    vocab: int = 1024
    batch: int = 64  # completions per update
    micro_batch: int = 16  # rows per forward / backward
    epochs: int = 4
    prompt_length: int = 16
    response_length: int = 48
    lr: float = 1e-5
    kl_coef: float = 0.05
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95

    @property
    def mini_batch(self) -> int:  # see the module docstring: one optimizer step per epoch
        return self.batch


TINY = Setup(
    layers=2, d_model=32, heads=2, vocab=320, batch=8, micro_batch=4, prompt_length=6, response_length=6
)


# ---- the shared weights and prompts -------------------------------------------------------------------
def build_inputs(work: Path, s: Setup) -> dict:
    """The policy folder (tokenizer + LLaMA, as bench_grpo builds them), the reward model as transformers
    (LlamaForSequenceClassification on the policy's body, a seeded score row) and as plmkit (its
    RewardModel with the same weights), the prompts of exactly s.prompt_length tokens."""
    import transformers as T
    from bench_grpo import build_folder

    from plmkit.io import save
    from plmkit.model.hf import load_hf
    from plmkit.recipes.reward_model import as_reward_model

    policy_dir, prompt_lines = build_folder(work / "policy", s)
    policy = T.AutoModelForCausalLM.from_pretrained(policy_dir)
    config = T.AutoConfig.from_pretrained(policy_dir, num_labels=1)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        reward = T.LlamaForSequenceClassification(config)
        reward.model.load_state_dict(policy.model.state_dict())
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            reward.score.weight.copy_(torch.randn(reward.score.weight.shape, generator=g) / s.d_model**0.5)
    reward_hf = work / "reward-hf"
    reward.save_pretrained(reward_hf)
    T.AutoTokenizer.from_pretrained(policy_dir).save_pretrained(reward_hf)
    body, tokenizer = load_hf(reward_hf)
    ours = as_reward_model(body, str(reward_hf))
    with torch.no_grad():
        ours.value_head.score.weight.copy_(reward.score.weight)
        ours.value_head.score.bias.zero_()
    reward_plmkit = save(ours, tokenizer, work / "reward-plmkit")
    prompts = fixed_length_prompts(tokenizer, prompt_lines, s.prompt_length)
    if len(prompts) < 2 * s.batch:
        raise SystemExit(f"only {len(prompts)} prompts of {s.prompt_length} tokens; need {2 * s.batch}")
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t, _ in prompts), encoding="utf-8")
    return {
        "policy": policy_dir,
        "reward_hf": reward_hf,
        "reward_plmkit": reward_plmkit,
        "prompts_file": prompts_file,
        "prompt_ids": [ids for _, ids in prompts],
        "parameters": {  # N of 6 N tokens (benchkit.models.model_flops_parameters)
            "policy": model_flops_parameters(policy),
            "critic": model_flops_parameters(reward),
        },
    }


def model_flops_parameters(model) -> int:
    from benchkit.models import model_flops_parameters as count

    return count(model)


def fixed_length_prompts(tokenizer, lines: list[str], length: int) -> list[tuple[str, list[int]]]:
    """(text, ids) of the lines' first `length` tokens, where the text encodes back to exactly those ids."""
    out = []
    for line in lines:
        ids = tokenizer.encode(line)[:length]
        text = tokenizer.decode(ids)
        if len(ids) == length and tokenizer.encode(text) == ids:
            out.append((text, ids))
    return out


# ---- plmkit ------------------------------------------------------------------------------------------------
def plmkit_run(inputs: dict, s: Setup, threads: int, work: Path):
    from plmkit.config import load_config
    from plmkit.recipes.ppo import build_ppo_run
    from plmkit.recipes.ppo_config import PpoConfig
    from plmkit.train.distributed.base import Strategy

    overrides = [
        f"init_from={inputs['policy']}", f"reward_model={inputs['reward_plmkit']}",
        f"data.train={inputs['prompts_file']}", "data.format=prompt", "chat_template=raw",
        "data.max_prompt_length=128", "samples_per_prompt=1", f"generation.max_new_tokens={s.response_length}",
        "generation.temperature=1.0", f"ppo.batch_size={s.batch}", f"ppo.mini_batch_size={s.mini_batch}",
        f"train.batch_size={s.micro_batch}", f"ppo.epochs={s.epochs}", f"ppo.kl_coef={s.kl_coef}",
        "ppo.kl_estimator=k1", "ppo.adaptive_kl=false", f"ppo.clip_eps={s.clip}", f"ppo.value_clip={s.value_clip}",
        f"ppo.vf_coef={s.vf_coef}", f"ppo.gamma={s.gamma}", f"ppo.lam={s.lam}", "ppo.whiten_advantages=true",
        "ppo.normalize_reward=false", "ppo.reward_clip=null", "ppo.missing_eos_penalty=null",
        f"optim.lr={s.lr}", "optim.weight_decay=0.0", "optim.betas=[0.9, 0.999]", "optim.eps=1e-8",
        f"critic_optim.lr={s.lr}", "critic_optim.weight_decay=0.0", "critic_optim.betas=[0.9, 0.999]",
        "critic_optim.eps=1e-8", "schedule.kind=constant", "train.clip_grad=null", "train.precision=fp32",
        "train.device=cpu", f"train.threads={threads}", f"out_dir={work / 'plmkit'}",
    ]  # fmt: skip
    config = load_config(PpoConfig, None, overrides)
    run = build_ppo_run(config, Strategy(), None)
    run.eos_ids = []  # trl's PPO with stop_token None samples every response to its full length: so does this
    for prompt, ids in zip(run.prompts, inputs["prompt_ids"], strict=False):
        if list(prompt.ids) != ids:
            raise SystemExit(f"plmkit read a prompt as {list(prompt.ids)}, trl gets {ids}")
    return run


class PlmkitUpdates:
    """One call = one PPO update (experience + learning) of the run, with its split recorded."""

    def __init__(self, run) -> None:
        self.run, self.step, self.records = run, 0, []

    def __call__(self) -> None:
        from benchkit.contention import own_cpu_seconds

        from plmkit.recipes.ppo_step import learn, make_experience

        cpu = own_cpu_seconds()  # the trl worker is idle meanwhile: its share of this stays fixed
        experience, metrics = make_experience(self.run, self.step)
        metrics.update(learn(self.run, experience, self.step))
        self.step += 1
        self.records.append(
            {
                "generation_seconds": metrics["rollout_seconds"],
                "experience_seconds": metrics["experience_seconds"],
                "learning_seconds": metrics["learn_seconds"],
                "response_length": metrics["response_length"],
                "cpu_seconds": own_cpu_seconds() - cpu,
            }
        )


# ---- trl (a subprocess of its own virtualenv) -------------------------------------------------------------
class TrlSide:
    """benchmarks/ppo_trl_side.py in the trl 1.12 virtualenv; one call = one update."""

    def __init__(self, python: Path, inputs: dict, s: Setup, threads: int, work: Path) -> None:
        setup = {
            "policy": str(inputs["policy"]), "reward": str(inputs["reward_hf"]), "work": str(work / "trl"),
            "prompts": inputs["prompt_ids"], "threads": threads,
            "hyper": {**asdict(s), "mini_batch": s.mini_batch},
        }  # fmt: skip
        path = work / "trl-setup.json"
        path.write_text(json.dumps(setup), encoding="utf-8")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": ""}
        self.process = subprocess.Popen(
            [str(python), str(HERE / "ppo_trl_side.py"), str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1,
        )  # fmt: skip
        self.cpu = 0.0  # the worker's CPU seconds as last reported
        self.records: list[dict] = []
        self.versions = self.read()
        self.training = False

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"trl's process ended (exit {self.process.wait()}); its stderr says why")
        return json.loads(line)

    def ask(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self.read()

    def check(self, query_responses: torch.Tensor, context: int, work: Path) -> dict:
        torch.save({"query_responses": query_responses, "context_length": context}, work / "check-in.pt")
        self.ask({"check": str(work / "check-in.pt"), "out": str(work / "check-out.pt")})
        return torch.load(work / "check-out.pt")

    def __call__(self) -> None:
        if not self.training:
            self.ask({"train": True})
            self.training = True
        record = self.ask({"step": True})
        record["cpu_seconds_so_far"], record["cpu_seconds"] = (
            record["cpu_seconds"],
            record["cpu_seconds"] - self.cpu,
        )
        self.cpu = record["cpu_seconds_so_far"]
        self.records.append(record)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ---- checks before timing ---------------------------------------------------------------------------------
def fixed_query_responses(run, s: Setup, n: int) -> tuple[torch.Tensor, int]:
    """(n, prompt_length + response_length): n prompts, each with a seeded response of ordinary tokens."""
    specials = {run.tokenizer.pad_id, run.tokenizer.eos_id}
    g = torch.Generator().manual_seed(5)
    ordinary = torch.tensor([i for i in range(run.tokenizer.vocab_size) if i not in specials])
    responses = ordinary[torch.randint(len(ordinary), (n, s.response_length), generator=g)]
    prompts = torch.tensor([list(q.ids) for q in run.prompts[:n]])
    return torch.cat([prompts, responses], dim=1), prompts.shape[1]


def plmkit_scores(run, query_responses: torch.Tensor, context: int) -> dict:
    from plmkit.model.dropout import dropout_off
    from plmkit.recipes.ppo_step import critic_values, reference_logprobs, reward_scores
    from plmkit.recipes.rollouts import frozen_logprobs

    response_mask = torch.zeros_like(query_responses, dtype=torch.bool)
    response_mask[:, context:] = True
    batch = {
        "input_ids": query_responses,
        "attention_mask": torch.ones_like(query_responses),
        "response_mask": response_mask,
    }
    with torch.no_grad(), dropout_off():
        return {
            "policy_logprobs": frozen_logprobs(run.actor, batch)[:, context:],
            "reference_logprobs": reference_logprobs(run, batch)[:, context:],
            "values": critic_values(run.critic, batch)[:, context:],
            "scores": reward_scores(run, batch),
        }


def check_sides(run, trl: TrlSide, s: Setup, work: Path) -> dict:
    query_responses, context = fixed_query_responses(run, s, min(8, s.batch))
    ours = plmkit_scores(run, query_responses, context)
    theirs = trl.check(query_responses, context, work)
    differences = {f"{k}_max_abs_difference": float((ours[k] - theirs[k]).abs().max()) for k in ours}
    return {**differences, "passed": all(d <= CHECK_ATOL for d in differences.values())}


# ---- figures ------------------------------------------------------------------------------------------------
def split(records: list[dict], warmup: int) -> dict:
    timed = records[warmup:] or records
    keys = ("generation_seconds", "experience_seconds", "learning_seconds", "gc_seconds", "cpu_seconds")
    return {k: statistics.median(r[k] for r in timed) for k in keys if k in timed[0]} | {
        "updates": len(timed)
    }


def limits_of(parts: dict, s: Setup, parameters: dict, peak: float) -> dict:
    """Generation tokens/s; learning GFLOP/s: 6 N tokens per trained model (policy, critic) per epoch."""
    tokens = s.batch * (s.prompt_length + s.response_length)
    flops = 6 * (parameters["policy"] + parameters["critic"]) * tokens * s.epochs
    gflops = flops / parts["learning_seconds"] / 1e9
    return {
        "generation_tokens_per_s": s.batch * s.response_length / parts["generation_seconds"],
        "learning_gflops": gflops,
        "learning_fraction_of_fp32_peak": gflops / peak,
    }


# ---- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """stdout carries the JSON lines only: whatever the libraries print goes to stderr."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="bench-ppo-") as work:
        return run_benchmark(argv, out, Path(work))


def run_benchmark(argv: list[str] | None, out, work: Path) -> int:
    """The benchmark; its checkpoints, prompts and the trl side's files go to `work` (removed by main)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="quiet rounds wanted")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results (none with --tiny)"
    )
    parser.add_argument("--trl-python", type=Path, default=TRL_PYTHON, help="python of the trl 1.12 venv")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and plan: tests this script only")
    args = parser.parse_args(argv)
    if args.out is None and not args.tiny:
        args.out = HERE / "results"
    torch.set_num_threads(args.threads)
    import transformers
    from benchkit import contention, limits, report
    from benchkit import rounds as R

    s = TINY if args.tiny else Setup()
    warmup = 1 if args.tiny else 2
    plan = (
        R.Plan(warmup=warmup, rounds=1, max_rounds=1, block_s=0.0, wait_s=0)
        if args.tiny
        else R.Plan(warmup=warmup, rounds=args.rounds, max_rounds=2 * args.rounds, block_s=0.0, budget_s=900)
    )
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    machine = limits.machine()
    peak = (
        limits.gemm_peak(torch.float32, 128, 1, 0.02)
        if args.tiny
        else limits.gemm_peak(torch.float32, 4096, 3, 2.0)
    )
    log(f"machine: {machine['cpu']['model']}; fp32 GEMM peak {peak:.1f} GFLOP/s ({args.threads} threads)")
    inputs = build_inputs(work, s)
    run = plmkit_run(inputs, s, args.threads, work)
    mine = PlmkitUpdates(run)
    label = (
        f"llama {s.layers}x{s.d_model} vocab {s.vocab}: {s.batch} prompts x ({s.prompt_length} + "
        f"{s.response_length} tokens), {s.epochs} epochs, micro-batch {s.micro_batch}"
    )
    row: dict = {
        "bench": "ppo_update",
        "name": label,
        "setup": asdict(s) | {"mini_batch": s.mini_batch},
        "reference_name": f"trl {TRL_VERSION} PPOTrainer",
    }
    trl = None
    if not args.trl_python.is_file():
        row["trl"] = (
            f"not timed: no trl {TRL_VERSION} virtualenv at {args.trl_python} (see the module docstring)"
        )
    else:
        trl = TrlSide(args.trl_python, inputs, s, args.threads, work)
        contention.count_worker(lambda: trl.cpu)
        row["versions_trl_side"] = trl.versions
        checks = check_sides(run, trl, s, work)
        row["checks"] = checks
        log(f"checks: {json.dumps(checks)}")
        if not checks["passed"]:
            trl.close()
            row |= {"status": "failed", "reason": "the two sides disagree before timing"}
            print(json.dumps(row), file=out, flush=True)
            return 1
    variants = {"plmkit": mine} if trl is None else {"trl": trl, "plmkit": mine}
    try:
        timed = R.compare(variants, plan)
    finally:
        if trl is not None:
            trl.close()
    row["seconds_per_update"] = {name: R.seconds(timed["rounds"], name) for name in variants}
    if trl is not None:
        row["speedup"] = R.ratio(timed["rounds"], "trl", "plmkit")  # trl's seconds / plmkit's
    row["split"] = {"plmkit": split(mine.records, warmup)}
    if trl is not None:
        row["split"]["trl"] = split(trl.records, warmup)
        # the same updates by CPU time (1 thread): what other processes take inflates it far less
        row["speedup_cpu_time"] = row["split"]["trl"]["cpu_seconds"] / row["split"]["plmkit"]["cpu_seconds"]
    row["limits"] = {
        "fp32_gemm_peak_gflops": peak,
        **{side: limits_of(parts, s, inputs["parameters"], peak) for side, parts in row["split"].items()},
    }
    row["parameters"] = inputs["parameters"]
    row["response_length_sampled"] = statistics.mean(r["response_length"] for r in mine.records)
    row["status"] = "ok"
    print(json.dumps(row), file=out, flush=True)
    result = {
        **row,
        "date": datetime.date.today().isoformat(),
        "threads": args.threads,
        "machine": machine,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "rounds": timed["rounds"],
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = report.output_stem(args.out, "ppo-" + limits.slug(machine["cpu"]["model"])).with_suffix(
            ".json"
        )
        report.write_text(path, json.dumps(result, indent=1) + "\n")
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
